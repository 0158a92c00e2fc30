"""Space-to-depth for narrow strided convolutions: the same layer in a shape that
onnxruntime's INT8 kernels run faster.

onnxruntime's INT8 convolutions run slowly over few input channels: ResNet-18's 7x7,
stride-2 stem over 3 channels took 2.3 ms of a 9.6-10 ms INT8 run (kernel time, 1
thread, AVX-512 VNNI), where its FP32 kernel took 1.7 ms and every other INT8
convolution ran at 0.2-0.3x of its FP32 time. Rearranged, the same layer is a
SpaceToDepth (each 2x2 block of pixels becomes 4 x channels) and a stride-1
convolution over 4 x the channels with a 4x4 kernel. In the whole INT8 model the stem's
kernel then took 0.89 ms instead of 2.20, and the model 7.52 ms instead of 8.88 (kernel
time, best of 6 runs each). In float the rewritten layer is slower (6.6 ms against
2.0 alone), so it is for INT8 only.

The rewrite is exact: the new kernel holds each original weight once, zeros elsewhere,
and the outputs are checked unchanged. The levels keep it only where the whole
quantized model is timed faster with it (`recipes.BuildContext.fast_activations`).
Keeping the stem float instead does not help: onnxruntime moves the QuantizeLinear
after it above the MaxPool that follows, which then runs as an NCHW uint8 MaxPool
(12-15 ms).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import numpy as np
import onnx
from onnx import numpy_helper

logger = logging.getLogger(__name__)

BLOCK: Final = 2                  # the stride rewritten, and SpaceToDepth's block size
MAX_CHANNELS: Final = 4           # input channels at most: the convolution then reads at most 16
SPACE_TO_DEPTH: Final = "_space_to_depth"   # the SpaceToDepth before convolution X is named X + this


@dataclass(frozen=True)
class Axis:
    """One spatial axis of the rewritten convolution."""
    kernel: int                   # kernel size over the rearranged input
    pad_begin: int
    pad_end: int
    offset: int                   # original kernel index u becomes 2 a + p = u + offset (`axis_plan`)


def axis_plan(size: int, kernel: int, pad_begin: int, pad_end: int) -> Axis | None:
    """How a stride-2 axis of `size` becomes stride 1 over size / 2, or None when it cannot.

    Original output i reads input 2 i + u - pad_begin for kernel index u; with
    t = u - pad_begin + 2 A (A = ceil(pad_begin / 2)) = 2 a + p, it reads rearranged
    row i + a - A, phase p. The new pad at the end makes the output sizes equal."""
    if size % BLOCK:
        return None
    outputs = (size + pad_begin + pad_end - kernel) // BLOCK + 1
    begin = -(-pad_begin // BLOCK)
    new_kernel = -(-(BLOCK * begin - pad_begin + kernel) // BLOCK)
    end = outputs - 1 - size // BLOCK - begin + new_kernel
    return Axis(new_kernel, begin, end, BLOCK * begin - pad_begin) if end >= 0 else None


def rearrange(weight: np.ndarray, rows: Axis, columns: Axis) -> np.ndarray:
    """[M, C, kh, kw] -> [M, 4 C, rows.kernel, columns.kernel] in SpaceToDepth's channel
    order (channel (2 p + q) C + c holds pixel phase (p, q) of channel c)."""
    out_channels, channels, kernel_h, kernel_w = weight.shape
    result = np.zeros((out_channels, BLOCK * BLOCK * channels, rows.kernel, columns.kernel), weight.dtype)
    for u in range(kernel_h):
        a, p = divmod(u + rows.offset, BLOCK)
        for v in range(kernel_w):
            b, q = divmod(v + columns.offset, BLOCK)
            start = (BLOCK * p + q) * channels
            result[:, start:start + channels, a, b] = weight[:, :, u, v]
    return result


def attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else onnx.helper.get_attribute_value(found)


def known_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Tensor name -> its shape as shape inference left it (None for a free dimension)."""
    shapes = {}
    for value in (*model.graph.input, *model.graph.value_info):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def plan(node: onnx.NodeProto, weight: onnx.TensorProto | None,
         shape: list[int | None] | None) -> tuple[Axis, Axis] | None:
    """The rewrite of one node, or None when it is not a narrow stride-2 2-D convolution
    with explicit pads over an input of fixed, even height and width (any batch)."""
    if node.op_type != "Conv" or weight is None or weight.data_type != onnx.TensorProto.FLOAT \
            or len(weight.dims) != 4 or shape is None or len(shape) != 4 or None in shape[1:]:
        return None
    if attribute(node, "group", 1) != 1 or list(attribute(node, "strides", [1, 1])) != [BLOCK, BLOCK] \
            or any(d != 1 for d in attribute(node, "dilations", [1, 1])) \
            or attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") \
            or weight.dims[1] > MAX_CHANNELS or shape[1] != weight.dims[1]:
        return None
    pads = list(attribute(node, "pads", [0, 0, 0, 0]))
    rows = axis_plan(shape[2], weight.dims[2], pads[0], pads[2])
    columns = axis_plan(shape[3], weight.dims[3], pads[1], pads[3])
    return (rows, columns) if rows and columns else None


def space_to_depth(model: onnx.ModelProto) -> tuple[onnx.ModelProto, tuple[str, ...]]:
    """(a copy of `model` with every narrow stride-2 convolution rewritten as SpaceToDepth
    and a stride-1 convolution, the names of those convolutions). Each SpaceToDepth is
    named after its convolution (SPACE_TO_DEPTH), to be kept float when quantizing;
    the convolution keeps its name. Weights shared by several nodes are left alone."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    initializers = {tensor.name: tensor for tensor in rewritten.graph.initializer}
    readers: dict[str, int] = {}
    for node in rewritten.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    shapes = known_shapes(rewritten)
    nodes, convolutions = [], []
    for node in rewritten.graph.node:
        weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
        axes = plan(node, weight, shapes.get(node.input[0])) if weight is None or readers[weight.name] == 1 else None
        if axes is not None and weight is not None:
            rows, columns = axes
            weight.CopyFrom(numpy_helper.from_array(rearrange(numpy_helper.to_array(weight), rows, columns),
                                                    weight.name))
            name = f"{node.name}{SPACE_TO_DEPTH}"
            nodes.append(onnx.helper.make_node("SpaceToDepth", [node.input[0]], [f"{name}_output"], name=name,
                                               blocksize=BLOCK))
            node.input[0] = f"{name}_output"
            kept = [a for a in node.attribute if a.name not in ("strides", "pads", "kernel_shape")]
            del node.attribute[:]
            node.attribute.extend([*kept, onnx.helper.make_attribute("strides", [1, 1]),
                                   onnx.helper.make_attribute("kernel_shape", [rows.kernel, columns.kernel]),
                                   onnx.helper.make_attribute("pads", [rows.pad_begin, columns.pad_begin,
                                                                       rows.pad_end, columns.pad_end])])
            convolutions.append(node.name)
        nodes.append(node)
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    return rewritten, tuple(convolutions)
