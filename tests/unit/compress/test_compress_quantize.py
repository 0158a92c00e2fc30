from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from fleetcast.server.compress.measure import open_session
from fleetcast.server.compress.quantize import Activations, Int8Quantizer, Method, int8_weights_only, weighted_layers
from fleetcast.server.compress.samples import input_specs, load_samples

from tests.unit.compress.builders import DIGITS


def test_weight_only_int8_shrinks_float_layers_and_keeps_their_outputs() -> None:
    original = (DIGITS / "digits.onnx").read_bytes()
    layers = tuple(weighted_layers(onnx.load_from_string(original)))
    assert layers == ("fc0", "fc1", "fc2")
    smaller = int8_weights_only(original, layers)
    x = np.load(DIGITS / "test.npz")["x"]
    before = open_session(original, threads=1).run(None, {"input": x})[0]
    after = open_session(smaller, threads=1).run(None, {"input": x})[0]
    assert len(smaller) < 0.3 * len(original)
    assert np.abs(after - before).max() < 0.05
    assert (after.argmax(1) == before.argmax(1)).mean() > 0.99
    ops = [n.op_type for n in onnx.load_from_string(smaller).graph.node]
    assert ops.count("DequantizeLinear") == 3 and ops.count("Gemm") == 3


def test_float_layer_with_int8_weights_matches_its_float_weights_and_shrinks_the_file(
        tmp_path: Path, conv_model_file, image_dir) -> None:
    path = conv_model_file()
    calibration = load_samples(image_dir("cal", 8), input_specs(onnx.load(str(path))), role="calibration")
    quantized = Int8Quantizer(path, calibration, tmp_path).quantize(Method.MINMAX, keep_float=("conv2",))
    smaller = int8_weights_only(quantized, ("conv2",))
    model = onnx.load_from_string(smaller)
    conv2 = next(node for node in model.graph.node if node.name == "conv2")
    producers = {output: node for node in model.graph.node for output in node.output}
    assert producers[conv2.input[1]].op_type == "DequantizeLinear"
    int8_weight = next(t for t in model.graph.initializer if t.name == producers[conv2.input[1]].input[0])
    assert int8_weight.data_type == onnx.TensorProto.INT8
    assert not [node for node in model.graph.node if "c2" in node.input and node.op_type == "QuantizeLinear"]
    x = np.random.default_rng(5).standard_normal((16, 3, 8, 8)).astype(np.float32)
    float_weights = open_session(quantized, threads=1).run(None, {"image": x})[0]
    int8_weights = open_session(smaller, threads=1).run(None, {"image": x})[0]
    assert np.abs(int8_weights - float_weights).max() < 0.02
    assert len(smaller) < len(quantized) - 2 * 16 * 8 * 9   # 4 bytes -> 1 per weight, less scales


def test_activation_type_sets_the_activations_and_leaves_the_weights_int8(
        tmp_path: Path, conv_model_file, image_dir) -> None:
    path = conv_model_file()
    calibration = load_samples(image_dir("cal", 8), input_specs(onnx.load(str(path))), role="calibration")
    quantizer = Int8Quantizer(path, calibration, tmp_path)
    x = np.random.default_rng(6).standard_normal((4, 3, 8, 8)).astype(np.float32)
    reference = open_session(str(path), threads=1).run(None, {"image": x})[0]
    for activations, activation_type in ((Activations.UINT8, onnx.TensorProto.UINT8),
                                         (Activations.INT8, onnx.TensorProto.INT8)):
        data = quantizer.quantize(Method.MINMAX, activations=activations)
        model = onnx.load_from_string(data)
        initializers = {t.name: t for t in model.graph.initializer}
        quantize_zero_points = {initializers[n.input[2]].data_type for n in model.graph.node
                                if n.op_type == "QuantizeLinear"}
        weights = [initializers[n.input[0]] for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in initializers
                   and len(initializers[n.input[0]].dims) > 1]
        assert quantize_zero_points == {activation_type}
        assert weights and {w.data_type for w in weights} == {onnx.TensorProto.INT8}
        outputs = open_session(data, threads=1).run(None, {"image": x})[0]
        assert np.abs(outputs - reference).max() < 0.1 * np.abs(reference).max()
