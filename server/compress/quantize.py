"""Static INT8 quantization with onnxruntime.quantization: QDQ format, asymmetric
activations, int8 symmetric per-channel weights.

Which activation type is fast depends on the CPU and onnxruntime's kernels for it:
on AVX-512 VNNI (onnxruntime 1.32) ResNet-18 ran at 0.31-0.33x FP32 latency with
uint8 activations and 0.80-0.94x with int8 (onnxruntime's default), so the levels
time both on the machine that builds them (`Activations`, `recipes.BuildContext`).
Dynamic quantization is never offered: on conv nets it was slower than FP32 and lost
accuracy.
Calibration ranges are computed once per method and cached, so trying many sets of
float layers costs one quantization pass each, not one calibration each.
"""

from __future__ import annotations

import contextlib
import enum
import io
import logging
from pathlib import Path
from typing import Final

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from fleetcast.server.compress.errors import LevelError
from fleetcast.server.compress.samples import Feed, SampleSet

logger = logging.getLogger(__name__)


class Method(enum.StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class Activations(enum.StrEnum):
    """The activation type of the QDQ model; weights are always int8."""
    UINT8 = "uint8"
    INT8 = "int8"


ORT_ACTIVATIONS: Final = {Activations.UINT8: QuantType.QUInt8, Activations.INT8: QuantType.QInt8}

ORT_METHODS: Final = {
    Method.MINMAX: CalibrationMethod.MinMax,
    Method.ENTROPY: CalibrationMethod.Entropy,
    Method.PERCENTILE: CalibrationMethod.Percentile,
}
PERCENTILE: Final = 99.999
# The layers whose compute INT8 speeds up; the sensitivity search keeps some of these in float.
WEIGHTED_OP_TYPES: Final = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


class FeedReader(CalibrationDataReader):
    """onnxruntime's calibration reader over our samples.

    `set_range` is the hook onnxruntime's strided calibration (`CalibStridedMinMax`)
    calls before each collection pass. With samples of different shapes the
    quantizer collects one sample per pass (`Int8Quantizer.quantize`): its entropy and
    percentile calibrators stack a pass's tensors into one array, which fails on
    differing shapes, and merge the histograms of successive passes, which does not.
    """

    def __init__(self, feeds: tuple[Feed, ...]) -> None:
        self.feeds = feeds
        self.position = 0
        self.end = len(feeds)

    def get_next(self) -> Feed | None:
        if self.position >= self.end:
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position, self.end = 0, len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.position, self.end = start_index, min(end_index, len(self.feeds))

    def __len__(self) -> int:
        return len(self.feeds)


def weighted_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes the sensitivity search may keep in float, in graph order."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type in WEIGHTED_OP_TYPES and any(name in initializers for name in node.input[1:2])]


FLOAT_TYPES: Final = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE})


def check_finite_weights(model: onnx.ModelProto) -> None:
    """Raise LevelError naming the float initializers that hold inf or NaN (attention
    masks filled with -inf are the usual case): the quantizer cannot scale them, and
    fails on them with a numpy error that names neither the tensor nor the fix."""
    bad = [tensor.name for tensor in model.graph.initializer if tensor.data_type in FLOAT_TYPES
           and not np.isfinite(onnx.numpy_helper.to_array(tensor)).all()]
    if bad:
        raise LevelError(f"initializer(s) {', '.join(repr(name) for name in bad[:5])} hold infinite or NaN "
                         "values, which INT8 has no scale for; give them finite values in the export (a large "
                         "negative number such as -1e4 where a mask uses -inf), or build a float level "
                         "(lossless, fp16)")


class Int8Quantizer:
    """Quantizes one float model (a file) many times with different float layers."""

    def __init__(self, model_path: Path, calibration: SampleSet, workdir: Path, *,
                 always_float: tuple[str, ...] = ()) -> None:
        self.model_path = Path(model_path)
        self.calibration = calibration
        self.workdir = Path(workdir)
        self.always_float = always_float  # nodes never quantized (layout.py's SpaceToDepth)
        self.count = 0

    def quantize(self, method: Method, *, keep_float: tuple[str, ...] = (),
                 activations: Activations = Activations.UINT8) -> bytes:
        """The QDQ INT8 model bytes; raises LevelError when the quantizer fails.
        Calibration ranges do not depend on the activation type, so one cache serves both."""
        self.count += 1
        output = self.workdir / f"int8-{method}-{activations}-{self.count}.onnx"
        extra_options = {"ActivationSymmetric": False, "WeightSymmetric": True}
        if method is Method.PERCENTILE:
            extra_options["CalibPercentile"] = PERCENTILE
        if self.calibration.varying_shapes():
            extra_options["CalibStridedMinMax"] = 1      # one sample per collection pass (FeedReader)
        chatter = io.StringIO()  # the calibrators print to stdout, which `--json` keeps for the report
        try:
            with contextlib.redirect_stdout(chatter):
                quantize_static(
                    self.model_path, output, FeedReader(self.calibration.feeds),
                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                    activation_type=ORT_ACTIVATIONS[activations], weight_type=QuantType.QInt8,
                    nodes_to_exclude=[*self.always_float, *keep_float], calibrate_method=ORT_METHODS[method],
                    extra_options=extra_options,
                    calibration_cache_path=self.workdir / f"calibration-{method}.json",
                )
        except Exception as error:  # the quantizer raises many kinds; the level reports it
            raise LevelError(f"onnxruntime's quantizer failed with {method} calibration: "
                             f"{type(error).__name__}: {str(error)[:300]}") from error
        logger.debug("quantizer output: %s", chatter.getvalue())
        data = output.read_bytes()
        output.unlink()
        return data


def weight_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of a layer's weight, for per-channel scales."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul" or node.op_type == "ConvTranspose":
        return 1
    return 0


def int8_weights_only(model_bytes: bytes, layers: tuple[str, ...]) -> bytes:
    """Store the float layers' weights as int8 (symmetric, per channel) behind a
    DequantizeLinear (weight-only QDQ): compute and activations stay float, the file
    shrinks. onnxruntime may dequantize at every inference rather than once at load,
    so `recipes.build_balanced` times each layer both ways."""
    if not layers:
        return model_bytes
    model = onnx.load_from_string(model_bytes)
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    added = []
    for node in model.graph.node:
        weight = initializers.get(node.input[1]) if node.name in layers and len(node.input) > 1 else None
        if weight is None or weight.data_type != onnx.TensorProto.FLOAT or len(weight.dims) < 2 \
                or readers[weight.name] != 1:
            continue
        values = onnx.numpy_helper.to_array(weight)
        axis = weight_axis(node)
        reduce = tuple(i for i in range(values.ndim) if i != axis)
        scale = np.maximum(np.abs(values).max(axis=reduce), 1e-12) / 127.0
        shaped = scale.reshape([-1 if i == axis else 1 for i in range(values.ndim)])
        quantized = np.clip(np.round(values / shaped), -127, 127).astype(np.int8)
        base = weight.name
        model.graph.initializer.remove(weight)
        model.graph.initializer.extend([
            onnx.numpy_helper.from_array(quantized, f"{base}_int8"),
            onnx.numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale"),
            onnx.numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{base}_zero_point")])
        added.append(onnx.helper.make_node("DequantizeLinear", [f"{base}_int8", f"{base}_scale", f"{base}_zero_point"],
                                           [base], name=f"{base}_weight_dequantize", axis=axis))
    nodes = added + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model.SerializeToString()
