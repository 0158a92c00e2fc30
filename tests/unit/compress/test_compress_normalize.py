from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fleetcast.server.compress.errors import ModelFormatError, UnsupportedModelError
from fleetcast.server.compress.normalize import check_runnable, load_model, normalize, optimize_graph, outputs_of

from tests.unit.compress.builders import conv_model

FEEDS = tuple({"image": np.random.default_rng(i).standard_normal((2, 3, 8, 8)).astype(np.float32)} for i in range(3))


def max_difference(a: onnx.ModelProto, b: onnx.ModelProto) -> float:
    return max(float(np.abs(x[0] - y[0]).max()) for x, y in zip(outputs_of(a, FEEDS), outputs_of(b, FEEDS)))


def test_old_export_with_constant_weights_is_brought_to_opset_13_with_initializers() -> None:
    old = conv_model(opset=11, weights_in_constants=True)
    normalized, notes = normalize(old, FEEDS)
    assert not [n for n in normalized.graph.node if n.op_type == "Constant"]
    assert {t.name for t in normalized.graph.initializer} >= {"conv1.w", "fc.w"}
    assert next(o.version for o in normalized.opset_import if o.domain == "") >= 13
    assert max_difference(old, normalized) <= 1e-6
    assert not notes


def test_graph_optimization_folds_batch_norm_into_conv_without_changing_outputs() -> None:
    normalized, _ = normalize(conv_model(), FEEDS)
    optimized = optimize_graph(normalized, FEEDS)
    assert "BatchNormalization" not in {n.op_type for n in optimized.graph.node}
    assert max_difference(conv_model(), optimized) <= 1e-5


def test_every_node_gets_a_unique_name() -> None:
    model = conv_model()
    for node in model.graph.node:
        node.name = ""
    normalized, _ = normalize(model, FEEDS)
    names = [n.name for n in normalized.graph.node]
    assert all(names) and len(set(names)) == len(names)


def test_a_file_that_is_not_onnx_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x89PNG this is a picture, not a model" * 10)
    with pytest.raises(ModelFormatError, match="not an ONNX model.*export"):
        load_model(path)


def test_an_operator_nobody_implements_is_refused_naming_it(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], name="weird", domain="com.example")],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedModelError, match="Frobnicate"):
        check_runnable(model, tmp_path / "weird.onnx")


def test_subnormal_weights_are_flushed_to_zero_and_nothing_else_changes() -> None:
    import numpy as np
    from onnx import numpy_helper

    from fleetcast.server.compress.normalize import flush_subnormal_weights
    from tests.unit.compress.builders import conv_model

    model = conv_model()
    weight = next(t for t in model.graph.initializer if t.name == "conv2.w")
    values = numpy_helper.to_array(weight).copy()
    values.flat[:5] = np.float32(1e-40)
    weight.CopyFrom(numpy_helper.from_array(values, "conv2.w"))
    flushed = numpy_helper.to_array(next(t for t in flush_subnormal_weights(model).graph.initializer
                                         if t.name == "conv2.w"))
    assert (flushed.flat[:5] == 0).all() and np.array_equal(flushed.flat[5:], values.flat[5:])
