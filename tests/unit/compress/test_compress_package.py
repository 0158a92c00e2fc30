from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

from fleetcast.server.compress import package
from fleetcast.server.compress.errors import PackageError
from fleetcast.server.compress.prune import prune
from fleetcast.server.compress.weight_sharing import share

from tests.unit.compress.builders import DIGITS

DTYPES = [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int32, np.int64]


def model_with(tensors: list[np.ndarray]) -> onnx.ModelProto:
    initializers = [numpy_helper.from_array(t, f"t{i}") for i, t in enumerate(tensors)]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializers)
    return helper.make_model(graph)


@st.composite
def tensors(draw) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12))
    style = draw(st.sampled_from(["any", "few_values", "sparse"]))
    if style == "any":
        elements = hnp.from_dtype(dtype, allow_nan=True, allow_infinity=True) if dtype.kind == "f" else None
        return draw(hnp.arrays(dtype, shape, elements=elements))
    values = draw(hnp.arrays(dtype, (draw(st.integers(1, 20)),)))
    array = np.resize(values, shape).astype(dtype)
    if style == "sparse":
        keep = draw(hnp.arrays(np.bool_, shape))
        array = np.where(keep, array, np.zeros((), dtype)).astype(dtype)
    return array


@settings(max_examples=150, deadline=None)
@given(st.lists(tensors(), min_size=1, max_size=4))
def test_decode_of_encode_gives_back_every_tensor_bit_for_bit(arrays: list[np.ndarray]) -> None:
    model = model_with(arrays)
    decoded = onnx.load_from_string(package.decode(package.encode(model)))
    assert [t.name for t in decoded.graph.initializer] == [t.name for t in model.graph.initializer]
    for original, restored in zip(model.graph.initializer, decoded.graph.initializer):
        before, after = numpy_helper.to_array(original), numpy_helper.to_array(restored)
        assert after.dtype == before.dtype and after.shape == before.shape
        assert after.tobytes() == before.tobytes()


def test_decoded_model_keeps_the_graph_unchanged() -> None:
    model = onnx.load(str(DIGITS / "digits.onnx"))
    decoded = onnx.load_from_string(package.decode(package.encode(model)))
    assert decoded.graph.node == model.graph.node
    assert decoded.graph.input == model.graph.input and decoded.graph.output == model.graph.output


def test_pruned_and_shared_weights_pack_far_smaller_than_raw_floats() -> None:
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((256, 256)).astype(np.float32)
    compressed = share(prune(dense, 0.9), 16)
    raw = len(package.encode(model_with([dense])))
    packed = len(package.encode(model_with([compressed])))
    assert packed * 8 < raw


@pytest.mark.parametrize("damage", ["truncate", "magic", "version", "header"])
def test_decode_rejects_damaged_packages_with_package_error(damage: str) -> None:
    data = bytearray(package.encode(model_with([np.arange(100, dtype=np.float32)])))
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "magic":
        data[0:4] = b"ONNX"
    elif damage == "version":
        data[4] = 99
    else:
        data[10] = ord("!")
    with pytest.raises(PackageError):
        package.decode(bytes(data))


def test_decoder_imports_neither_quantization_nor_plotting_libraries() -> None:
    code = ("import sys; import fleetcast.server.compress.package as p; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'matplotlib', 'sklearn', 'onnxconverter_common')]; "
            "print(','.join(heavy))")
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert output.strip() == ""
