from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from fleetcast.server.compress.layout import SPACE_TO_DEPTH, space_to_depth
from fleetcast.server.compress.measure import Evaluator, open_session
from fleetcast.server.compress.quantize import Activations, Int8Quantizer, Method
from fleetcast.server.compress.recipes import BuildContext
from fleetcast.server.compress.samples import input_specs, load_samples

from tests.unit.compress.builders import strided_stem_model


def outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return open_session(model.SerializeToString(), threads=1).run(None, {"image": x})[0]


def test_a_narrow_strided_stem_becomes_space_to_depth_and_a_stride_1_convolution() -> None:
    model = strided_stem_model()                 # 7x7, stride 2, pads 3, over 3 channels, like ResNet's
    rewritten, convolutions = space_to_depth(model)
    assert convolutions == ("stem",)
    nodes = {node.name: node for node in rewritten.graph.node}
    assert nodes["stem" + SPACE_TO_DEPTH].op_type == "SpaceToDepth"
    assert nodes["stem"].input[0] == nodes["stem" + SPACE_TO_DEPTH].output[0]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["stem"].attribute}
    assert attributes["strides"] == [1, 1] and attributes["kernel_shape"] == [4, 4]
    assert attributes["pads"] == [2, 2, 1, 1]
    weight = next(t for t in rewritten.graph.initializer if t.name == "stem.w")
    assert list(weight.dims) == [8, 12, 4, 4]
    assert "conv" not in convolutions                         # stride 1 over 8 channels: left as it was


@pytest.mark.parametrize("size, kernel, pads", [
    (16, 7, (3, 3, 3, 3)), (16, 3, (1, 1, 1, 1)), (14, 3, (0, 0, 0, 0)), (16, 2, (0, 0, 0, 0)),
    (12, 5, (2, 1, 1, 2)), (10, 4, (1, 1, 2, 2)), (16, 1, (0, 0, 0, 0)),
])
def test_space_to_depth_keeps_the_outputs_for_any_kernel_and_padding(
        size: int, kernel: int, pads: tuple[int, int, int, int]) -> None:
    model = strided_stem_model(size=size, kernel=kernel, pads=pads)
    rewritten, convolutions = space_to_depth(model)
    assert convolutions == ("stem",)
    x = np.random.default_rng(size + kernel).standard_normal((3, 3, size, size)).astype(np.float32)
    np.testing.assert_allclose(outputs(rewritten, x), outputs(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("changes", [
    {"strides": (1, 1)}, {"size": 15}, {"channels": 8}, {"channels": 4, "group": 2}, {"free_size": True},
], ids=["stride-1", "odd-size", "wide", "grouped", "free-size"])
def test_convolutions_it_cannot_rewrite_exactly_are_left_alone(changes: dict) -> None:
    model = strided_stem_model(**changes)
    rewritten, convolutions = space_to_depth(model)
    assert convolutions == ()
    assert rewritten == model


def test_a_build_that_keeps_a_rewritten_convolution_float_quantizes_the_plain_model(
        tmp_path: Path, image_dir) -> None:
    model = strided_stem_model()
    plain_path, rewritten_path = tmp_path / "plain.onnx", tmp_path / "rewritten.onnx"
    rewritten, convolutions = space_to_depth(model)
    onnx.save(model, str(plain_path))
    onnx.save(rewritten, str(rewritten_path))
    samples = load_samples(image_dir("cal", 4, shape=(1, 3, 16, 16)), input_specs(model), role="calibration")
    context = BuildContext(base=model, base_path=plain_path, workdir=tmp_path, calibration=samples,
                           evaluator=Evaluator(model.SerializeToString(), samples, threads=1), budget_pp=1.0,
                           methods=("minmax",))
    plain = context.int8()
    (tmp_path / "rewritten").mkdir()
    context.plain_quantizer, context.quantizer = plain, Int8Quantizer(
        rewritten_path, samples, tmp_path / "rewritten", always_float=("stem" + SPACE_TO_DEPTH,))
    context.rewritten_convolutions, context.activations = convolutions, Activations.UINT8
    assert context.int8_for(("stem",)) is plain
    assert context.int8_for(("conv",)) is context.quantizer and context.int8_for(()) is context.quantizer
    assert context.int8_fields(Method.MINMAX, ("stem",))["space_to_depth"] == []
    assert context.int8_fields(Method.MINMAX, ("conv",))["space_to_depth"] == ["stem"]
    kept_float = onnx.load_from_string(context.int8_for(("stem",)).quantize(Method.MINMAX, keep_float=("stem",)))
    assert "SpaceToDepth" not in {node.op_type for node in kept_float.graph.node}
