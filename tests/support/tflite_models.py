"""TFLite test models built here as flatbuffers with the `tflite` schema package.

No converter (TensorFlow) is needed: each model is a list of float32 tensors and
built-in operators written with the generated builder functions. `mlp()` and
`conv_net()` are the two benchmark and test models; `relu()` is the agent's probe model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import flatbuffers
import numpy as np
import tflite

Options = Callable[[flatbuffers.Builder], tuple[int, int]]   # -> (options type, offset)


@dataclass(frozen=True)
class T:
    name: str
    shape: tuple[int, ...]
    data: np.ndarray | None = None      # constants carry data; int32 for shapes


@dataclass(frozen=True)
class Op:
    code: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Options | None = None


def _vector(b: flatbuffers.Builder, start: Callable[[flatbuffers.Builder, int], None], items: Sequence[int],
            prepend: Callable[[int], None]) -> int:
    start(b, len(items))
    for item in reversed(items):
        prepend(item)
    return b.EndVector()


def build(tensors: Sequence[T], ops: Sequence[Op], inputs: Sequence[int], outputs: Sequence[int]) -> bytes:
    b = flatbuffers.Builder(1024)
    codes = sorted({op.code for op in ops})
    # Buffers: 0 is the empty sentinel, then one per constant tensor.
    buffer_data = [None] + [t.data for t in tensors if t.data is not None]
    buffer_offsets = []
    for data in buffer_data:
        vec = b.CreateByteVector(np.ascontiguousarray(data).tobytes()) if data is not None else None
        tflite.BufferStart(b)
        if vec is not None:
            tflite.BufferAddData(b, vec)
        buffer_offsets.append(tflite.BufferEnd(b))
    tensor_offsets, next_buffer = [], 1
    for t in tensors:
        name = b.CreateString(t.name)
        shape = _vector(b, tflite.TensorStartShapeVector, list(t.shape), b.PrependInt32)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        is_int = t.data is not None and t.data.dtype == np.int32
        tflite.TensorAddType(b, tflite.TensorType.INT32 if is_int else tflite.TensorType.FLOAT32)
        tflite.TensorAddName(b, name)
        if t.data is not None:
            tflite.TensorAddBuffer(b, next_buffer)
            next_buffer += 1
        else:
            tflite.TensorAddBuffer(b, 0)
        tensor_offsets.append(tflite.TensorEnd(b))
    op_offsets = []
    for op in ops:
        options = op.options(b) if op.options else None
        ins = _vector(b, tflite.OperatorStartInputsVector, list(op.inputs), b.PrependInt32)
        outs = _vector(b, tflite.OperatorStartOutputsVector, list(op.outputs), b.PrependInt32)
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, codes.index(op.code))
        tflite.OperatorAddInputs(b, ins)
        tflite.OperatorAddOutputs(b, outs)
        if options:
            tflite.OperatorAddBuiltinOptionsType(b, options[0])
            tflite.OperatorAddBuiltinOptions(b, options[1])
        op_offsets.append(tflite.OperatorEnd(b))
    tensors_vec = _vector(b, tflite.SubGraphStartTensorsVector, tensor_offsets, b.PrependUOffsetTRelative)
    ops_vec = _vector(b, tflite.SubGraphStartOperatorsVector, op_offsets, b.PrependUOffsetTRelative)
    in_vec = _vector(b, tflite.SubGraphStartInputsVector, list(inputs), b.PrependInt32)
    out_vec = _vector(b, tflite.SubGraphStartOutputsVector, list(outputs), b.PrependInt32)
    name = b.CreateString("main")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors_vec)
    tflite.SubGraphAddOperators(b, ops_vec)
    tflite.SubGraphAddInputs(b, in_vec)
    tflite.SubGraphAddOutputs(b, out_vec)
    tflite.SubGraphAddName(b, name)
    subgraph = tflite.SubGraphEnd(b)
    code_offsets = []
    for code in codes:
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddVersion(b, 1)
        code_offsets.append(tflite.OperatorCodeEnd(b))
    codes_vec = _vector(b, tflite.ModelStartOperatorCodesVector, code_offsets, b.PrependUOffsetTRelative)
    subgraphs_vec = _vector(b, tflite.ModelStartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
    buffers_vec = _vector(b, tflite.ModelStartBuffersVector, buffer_offsets, b.PrependUOffsetTRelative)
    description = b.CreateString("fleetcast test model")
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes_vec)
    tflite.ModelAddSubgraphs(b, subgraphs_vec)
    tflite.ModelAddDescription(b, description)
    tflite.ModelAddBuffers(b, buffers_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _fc(activation: int) -> Options:
    def options(b: flatbuffers.Builder) -> tuple[int, int]:
        tflite.FullyConnectedOptionsStart(b)
        tflite.FullyConnectedOptionsAddFusedActivationFunction(b, activation)
        return tflite.BuiltinOptions.FullyConnectedOptions, tflite.FullyConnectedOptionsEnd(b)
    return options


def _conv(activation: int) -> Options:
    def options(b: flatbuffers.Builder) -> tuple[int, int]:
        tflite.Conv2DOptionsStart(b)
        tflite.Conv2DOptionsAddPadding(b, tflite.Padding.SAME)
        tflite.Conv2DOptionsAddStrideW(b, 1)
        tflite.Conv2DOptionsAddStrideH(b, 1)
        tflite.Conv2DOptionsAddFusedActivationFunction(b, activation)
        return tflite.BuiltinOptions.Conv2DOptions, tflite.Conv2DOptionsEnd(b)
    return options


def _pool(size: int) -> Options:
    def options(b: flatbuffers.Builder) -> tuple[int, int]:
        tflite.Pool2DOptionsStart(b)
        tflite.Pool2DOptionsAddPadding(b, tflite.Padding.VALID)
        tflite.Pool2DOptionsAddStrideW(b, size)
        tflite.Pool2DOptionsAddStrideH(b, size)
        tflite.Pool2DOptionsAddFilterWidth(b, size)
        tflite.Pool2DOptionsAddFilterHeight(b, size)
        return tflite.BuiltinOptions.Pool2DOptions, tflite.Pool2DOptionsEnd(b)
    return options


def relu() -> bytes:
    """y = relu(x), x: 1x4 float32."""
    return build([T("x", (1, 4)), T("y", (1, 4))], [Op(tflite.BuiltinOperator.RELU, (0,), (1,))], [0], [1])


def mlp_weights(features: int = 64, hidden: int = 256, classes: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """FC weights as TFLite stores them: (out, in)."""
    rng = np.random.default_rng(seed)
    w = lambda o, i: (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)   # noqa: E731
    z = lambda n: (rng.standard_normal(n) * 0.1).astype(np.float32)                  # noqa: E731
    return {"w1": w(hidden, features), "b1": z(hidden), "w2": w(hidden, hidden), "b2": z(hidden),
            "w3": w(classes, hidden), "b3": z(classes)}


def mlp(features: int = 64, hidden: int = 256, classes: int = 10, seed: int = 0,
        weights: dict[str, np.ndarray] | None = None) -> bytes:
    """x (1 x features) -> FC+ReLU (hidden) -> FC+ReLU (hidden) -> FC (classes)."""
    k = weights or mlp_weights(features, hidden, classes, seed)
    tensors = [T("input", (1, features)),
               T("w1", (hidden, features), k["w1"]), T("b1", (hidden,), k["b1"]), T("h1", (1, hidden)),
               T("w2", (hidden, hidden), k["w2"]), T("b2", (hidden,), k["b2"]), T("h2", (1, hidden)),
               T("w3", (classes, hidden), k["w3"]), T("b3", (classes,), k["b3"]), T("logits", (1, classes))]
    FC, RELU, NONE = tflite.BuiltinOperator.FULLY_CONNECTED, tflite.ActivationFunctionType.RELU, \
        tflite.ActivationFunctionType.NONE
    ops = [Op(FC, (0, 1, 2), (3,), _fc(RELU)), Op(FC, (3, 4, 5), (6,), _fc(RELU)), Op(FC, (6, 7, 8), (9,), _fc(NONE))]
    return build(tensors, ops, [0], [9])


def conv_weights(channels: int = 3, filters: int = 16, classes: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Conv kernels as TFLite stores them: (out, h, w, in); FC (out, in)."""
    rng = np.random.default_rng(seed)
    k = lambda o, i: (rng.standard_normal((o, 3, 3, i)) / np.sqrt(9 * i)).astype(np.float32)   # noqa: E731
    z = lambda n: (rng.standard_normal(n) * 0.1).astype(np.float32)                            # noqa: E731
    return {"k1": k(filters, channels), "c1": z(filters), "k2": k(filters, filters), "c2": z(filters),
            "w": (rng.standard_normal((classes, filters)) / 4).astype(np.float32), "b": z(classes)}


def conv_net(size: int = 32, channels: int = 3, filters: int = 16, classes: int = 10, seed: int = 0,
             weights: dict[str, np.ndarray] | None = None) -> bytes:
    """x (1 x size x size x channels, NHWC) -> two 3x3 conv+ReLU -> average pool -> FC (classes)."""
    k = weights or conv_weights(channels, filters, classes, seed)
    RELU = tflite.ActivationFunctionType.RELU
    tensors = [T("input", (1, size, size, channels)),
               T("k1", (filters, 3, 3, channels), k["k1"]), T("c1", (filters,), k["c1"]),
               T("a1", (1, size, size, filters)),
               T("k2", (filters, 3, 3, filters), k["k2"]), T("c2", (filters,), k["c2"]),
               T("a2", (1, size, size, filters)),
               T("pooled", (1, 1, 1, filters)), T("shape", (2,), np.array([1, filters], np.int32)),
               T("flat", (1, filters)),
               T("w", (classes, filters), k["w"]), T("b", (classes,), k["b"]), T("logits", (1, classes))]
    B = tflite.BuiltinOperator
    ops = [Op(B.CONV_2D, (0, 1, 2), (3,), _conv(RELU)), Op(B.CONV_2D, (3, 4, 5), (6,), _conv(RELU)),
           Op(B.AVERAGE_POOL_2D, (6,), (7,), _pool(size)), Op(B.RESHAPE, (7, 8), (9,)),
           Op(B.FULLY_CONNECTED, (9, 10, 11), (12,), _fc(tflite.ActivationFunctionType.NONE))]
    return build(tensors, ops, [0], [12])


def onnx_twin(kind: str, weights: dict[str, np.ndarray], *, size: int = 32) -> bytes:
    """The same network as ONNX (NCHW for the conv net), from the same weights: what the
    benchmarks time onnxruntime, MNN and OpenVINO on."""
    from onnx import TensorProto, helper, numpy_helper

    init = lambda a, n: numpy_helper.from_array(np.ascontiguousarray(a), n)   # noqa: E731
    if kind == "mlp":
        inits = [init(weights[n].T, n) if n.startswith("w") else init(weights[n], n)
                 for n in ("w1", "b1", "w2", "b2", "w3", "b3")]
        nodes = [helper.make_node("Gemm", ["input", "w1", "b1"], ["g1"]), helper.make_node("Relu", ["g1"], ["h1"]),
                 helper.make_node("Gemm", ["h1", "w2", "b2"], ["g2"]), helper.make_node("Relu", ["g2"], ["h2"]),
                 helper.make_node("Gemm", ["h2", "w3", "b3"], ["logits"])]
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, weights["w1"].shape[1]])
    else:
        inits = [init(weights["k1"].transpose(0, 3, 1, 2), "k1"), init(weights["c1"], "c1"),
                 init(weights["k2"].transpose(0, 3, 1, 2), "k2"), init(weights["c2"], "c2"),
                 init(weights["w"].T, "w"), init(weights["b"], "b")]
        nodes = [helper.make_node("Conv", ["input", "k1", "c1"], ["v1"], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["v1"], ["a1"]),
                 helper.make_node("Conv", ["a1", "k2", "c2"], ["v2"], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["v2"], ["a2"]),
                 helper.make_node("GlobalAveragePool", ["a2"], ["pooled"]),
                 helper.make_node("Flatten", ["pooled"], ["flat"]),
                 helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])]
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, weights["k1"].shape[3], size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, weights["b3" if kind == "mlp" else "b"].shape[0]])
    graph = helper.make_graph(nodes, f"{kind}_twin", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
