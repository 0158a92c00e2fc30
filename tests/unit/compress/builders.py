"""Small models built with onnx.helper, and where the digits example lives, for the compression tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fleetcast.server.compress.measure import LatencyConfig

ROOT = Path(__file__).resolve().parents[3]
DIGITS = ROOT / "examples" / "digits"
FAST_LATENCY = LatencyConfig(warmup_runs=1, min_runs=3, max_runs=3, min_duration_s=0.0)


def conv_model(*, opset: int = 17, weights_in_constants: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Conv -> BatchNorm -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax,
    input "image" [N, 3, 8, 8], output "scores" [N, 4]."""
    rng = np.random.default_rng(seed)
    tensors = {
        "conv1.w": rng.standard_normal((8, 3, 3, 3)) * 0.3, "conv1.b": rng.standard_normal(8) * 0.1,
        "bn.scale": 1 + 0.1 * rng.standard_normal(8), "bn.bias": 0.1 * rng.standard_normal(8),
        "bn.mean": 0.1 * rng.standard_normal(8), "bn.var": 1 + np.abs(0.1 * rng.standard_normal(8)),
        "conv2.w": rng.standard_normal((16, 8, 3, 3)) * 0.2, "fc.w": rng.standard_normal((4, 16)) * 0.5,
        "fc.b": np.zeros(4),
    }
    nodes = [
        helper.make_node("Conv", ["image", "conv1.w", "conv1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b1"], name="bn"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["scores"], name="softmax", axis=1),
    ]
    arrays = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()]
    initializers = arrays
    if weights_in_constants:
        nodes = [helper.make_node("Constant", [], [a.name], value=a) for a in arrays] + nodes
        initializers = []
    graph = helper.make_graph(nodes, "tiny_conv",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def write_images(directory: Path, count: int, *, seed: int = 1, shape=(1, 3, 8, 8)) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        np.save(directory / f"{index:03d}.npy", rng.standard_normal(shape).astype(np.float32))
    return directory


def strided_stem_model(*, size: int = 16, kernel: int = 7, pads: tuple[int, int, int, int] = (3, 3, 3, 3),
                       channels: int = 3, group: int = 1, strides: tuple[int, int] = (2, 2),
                       free_size: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Conv (stride 2 over `channels`, an RGB stem by default) -> Relu -> MaxPool -> Conv -> GlobalAveragePool
    -> Flatten -> Gemm, input "image" [N, channels, size, size] (or [N, channels, H, W] with `free_size`)."""
    rng = np.random.default_rng(seed)
    tensors = {"stem.w": rng.standard_normal((8, channels // group, kernel, kernel)) * 0.2,
               "stem.b": rng.standard_normal(8) * 0.1, "conv.w": rng.standard_normal((8, 8, 3, 3)) * 0.2,
               "fc.w": rng.standard_normal((4, 8)) * 0.5, "fc.b": np.zeros(4)}
    nodes = [
        helper.make_node("Conv", ["image", "stem.w", "stem.b"], ["s"], name="stem", strides=list(strides),
                         pads=list(pads), group=group),
        helper.make_node("Relu", ["s"], ["r"], name="stem_relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p", "conv.w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    dims = ["N", channels, "H", "W"] if free_size else ["N", channels, size, size]
    graph = helper.make_graph(nodes, "strided_stem", [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model
