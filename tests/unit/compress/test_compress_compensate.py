"""Error-compensated pruning and sharing (`compensate.py`): the layer inputs it reads
are the ones onnxruntime multiplies, and compensation beats plain magnitude pruning
and k-means on the same plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fleetcast.server.compress import compensate
from fleetcast.server.compress.measure import open_session
from fleetcast.server.compress.samples import input_specs, load_samples

DIGITS = Path(__file__).resolve().parents[3] / "examples" / "digits"


def conv_layer_model(*, channels: int, out: int, kernel: int, stride: int, pad: int, dilation: int,
                     group: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((out, channels // group, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(out).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", group=group, strides=[stride, stride],
                            pads=[pad, pad, pad, pad], dilations=[dilation, dilation])
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, channels, 9, 9])
    graph = helper.make_graph([node], "conv", [image],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def dense_model(*, op: str, trans_b: int = 1, seed: int = 0, inputs: int = 24, outputs: int = 16) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    if op == "Gemm":
        shape = (outputs, inputs) if trans_b else (inputs, outputs)
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=trans_b)
        initializers = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), "w"),
                        numpy_helper.from_array(rng.standard_normal(outputs).astype(np.float32), "b")]
    else:
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")
        initializers = [numpy_helper.from_array(rng.standard_normal((inputs, outputs)).astype(np.float32), "w")]
    graph = helper.make_graph([node], "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, inputs])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def correlated_inputs(rows: int, width: int, seed: int) -> np.ndarray:
    """Inputs whose features are strongly correlated, as real activations are."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((width // 4, width))
    return (rng.standard_normal((rows, width // 4)) @ mixing + 0.1 * rng.standard_normal((rows, width)) + 0.5)


def statistics_of(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]):
    shapes = compensate.layer_shapes(model, ["w"])
    return shapes["w"], compensate.collect_statistics(model, shapes, feeds, threads=1)["w"]


@pytest.mark.parametrize(("kernel", "stride", "pad", "dilation", "group", "channels", "out"), [
    (3, 1, 1, 1, 1, 4, 6), (3, 2, 0, 1, 1, 4, 6), (2, 1, 1, 2, 2, 4, 6), (3, 1, 1, 1, 8, 8, 8), (1, 1, 0, 1, 1, 5, 3)])
def test_convolution_patches_times_the_weight_matrix_give_onnxruntimes_output(
        kernel: int, stride: int, pad: int, dilation: int, group: int, channels: int, out: int) -> None:
    model = conv_layer_model(channels=channels, out=out, kernel=kernel, stride=stride, pad=pad,
                             dilation=dilation, group=group)
    x = np.random.default_rng(1).standard_normal((2, channels, 9, 9)).astype(np.float32)
    expected = open_session(model.SerializeToString(), threads=1).run(None, {"x": x})[0]
    shape = compensate.layer_shapes(model, ["w"])["w"]
    columns = compensate.input_columns(shape, x.astype(np.float64), np.random.default_rng(0))
    matrix = shape.matrix(numpy_helper.to_array(model.graph.initializer[0]))
    outputs = np.einsum("grd,god->rgo", columns, matrix).reshape(len(x), *expected.shape[2:], out)
    bias = numpy_helper.to_array(model.graph.initializer[1])
    np.testing.assert_allclose(outputs.transpose(0, 3, 1, 2) + bias[None, :, None, None], expected, atol=1e-4)


@pytest.mark.parametrize(("op", "trans_b"), [("Gemm", 1), ("Gemm", 0), ("MatMul", 0)])
def test_compensation_keeps_the_plan_and_loses_less_output_than_magnitude_and_kmeans(op: str, trans_b: int) -> None:
    model = dense_model(op=op, trans_b=trans_b)
    x = correlated_inputs(256, 24, seed=2).astype(np.float32)
    shape, stats = statistics_of(model, [{"x": x}])
    weight = numpy_helper.to_array(model.graph.initializer[0])
    bias = numpy_helper.to_array(model.graph.initializer[1]) if op == "Gemm" else None

    def output(w: np.ndarray, b: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
        matrix = w.T if shape.transposed else w
        return rows @ matrix.T + (0 if b is None else b)

    for sparsity, entries in ((0.5, None), (0.7, 4), (0.3, 16)):
        result = compensate.compensated_layer(shape, weight, bias, stats, sparsity, entries)
        assert result.weight.dtype == weight.dtype and result.weight.shape == weight.shape
        assert (result.weight == 0).sum() >= round(weight.size * sparsity)
        if entries is not None:
            assert len(np.unique(result.weight[result.weight != 0])) <= entries
        plain = compensate.plain_layer(weight, sparsity, entries)
        reference = output(weight, bias, x)
        error = np.square(output(result.weight, result.bias, x) - reference).mean()
        plain_error = np.square(output(plain, bias, x) - reference).mean()
        assert error < 0.8 * plain_error, (sparsity, entries, error, plain_error)


def test_bias_correction_removes_the_mean_output_shift_on_the_calibration_inputs() -> None:
    model = dense_model(op="Gemm")
    x = correlated_inputs(128, 24, seed=3).astype(np.float32)
    shape, stats = statistics_of(model, [{"x": x[:64]}, {"x": x[64:]}])
    weight, bias = (numpy_helper.to_array(t) for t in model.graph.initializer)
    result = compensate.compensated_layer(shape, weight, bias, stats, 0.8, 4)
    shift = (x @ result.weight.T + result.bias).mean(0) - (x @ weight.T + bias).mean(0)
    np.testing.assert_allclose(shift, 0, atol=1e-3)
    assert stats.rows == 128


def test_convolution_with_groups_is_compensated_per_group() -> None:
    model = conv_layer_model(channels=8, out=8, kernel=3, stride=1, pad=1, dilation=1, group=4)
    rng = np.random.default_rng(4)
    shared = rng.standard_normal((8, 1, 9, 9))
    x = (shared + 0.2 * rng.standard_normal((8, 8, 9, 9))).astype(np.float32)
    shape, stats = statistics_of(model, [{"x": x}])
    assert stats.second.shape == (4, 18, 18)
    weight, bias = (numpy_helper.to_array(t) for t in model.graph.initializer)
    result = compensate.compensated_layer(shape, weight, bias, stats, 0.5, None)
    session = open_session(model.SerializeToString(), threads=1)
    reference = session.run(None, {"x": x})[0]

    def run(w: np.ndarray, b: np.ndarray) -> np.ndarray:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
        copy.graph.initializer[1].CopyFrom(numpy_helper.from_array(b, "b"))
        return open_session(copy.SerializeToString(), threads=1).run(None, {"x": x})[0]

    compensated = np.square(run(result.weight, result.bias) - reference).mean()
    plain = np.square(run(compensate.plain_layer(weight, 0.5, None), bias) - reference).mean()
    assert compensated < plain


def test_layers_it_cannot_describe_are_left_to_plain_pruning() -> None:
    weight = numpy_helper.from_array(np.ones((4, 4, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv1d")
    shared = helper.make_node("MatMul", ["y", "m"], ["z"], name="first")
    again = helper.make_node("MatMul", ["z", "m"], ["out"], name="second")
    signal = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])
    graph = helper.make_graph([node, shared, again], "g", [signal],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [weight, numpy_helper.from_array(np.ones((6, 6), np.float32), "m")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert compensate.layer_shapes(model, ["w", "m"]) == {}


def test_compensated_smallest_plan_keeps_more_digits_accuracy_than_plain_pruning() -> None:
    """On the real digits classifier, the same aggressive plan, judged on the labelled
    evaluation samples the compensation never saw."""
    model = onnx.load(str(DIGITS / "digits.onnx"))
    specs = input_specs(model)
    calibration = load_samples(DIGITS / "calibration", specs, role="calibration")
    evaluation = load_samples(DIGITS / "eval", specs, role="evaluation")
    names = ["fc0.weight", "fc1.weight", "fc2.weight"]
    shapes = compensate.layer_shapes(model, names)
    stats = compensate.collect_statistics(model, shapes, calibration.feeds, threads=1)
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    plan = {"fc0.weight": (0.8, 8), "fc1.weight": (0.9, 8), "fc2.weight": (0.7, 16)}

    def accuracy(changed: dict[str, np.ndarray]) -> float:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        for tensor in copy.graph.initializer:
            if tensor.name in changed:
                tensor.CopyFrom(numpy_helper.from_array(changed[tensor.name], tensor.name))
        session = open_session(copy.SerializeToString(), threads=1)
        predictions = np.concatenate([session.run(None, feed)[0].argmax(1) for feed in evaluation.feeds])
        return float((predictions == evaluation.labels).mean())

    plain, compensated = {}, {}
    for name, (sparsity, entries) in plan.items():
        plain[name] = compensate.plain_layer(tensors[name], sparsity, entries)
        shape = shapes[name]
        result = compensate.compensated_layer(shape, tensors[name], tensors[shape.bias_name], stats[name],
                                              sparsity, entries)
        compensated[name], compensated[shape.bias_name] = result.weight, result.bias
    assert accuracy(compensated) > accuracy(plain) + 0.02
