"""Normalizing a model before compressing it, and the lossless graph optimization.

Real exports often arrive at opset 11 or 12 with weights in `Constant` nodes and
initializers listed as graph inputs; onnxruntime's quantizer and shape inference
fail on those. `normalize` fixes that one transform at a time and checks after each
that the outputs are unchanged on probe inputs; a transform that changes them is
dropped (and logged), never kept.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from fleetcast.server.compress.errors import ModelFormatError, NormalizationError, UnsupportedModelError
from fleetcast.server.compress.measure import open_session
from fleetcast.server.compress.samples import Feed

logger = logging.getLogger(__name__)

MIN_OPSET = 13
RTOL = 1e-4
ATOL = 1e-5

Transform = Callable[[onnx.ModelProto], onnx.ModelProto]


def load_model(path: Path) -> onnx.ModelProto:
    """Read and check an ONNX file; raises ModelFormatError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"model file {path} does not exist; pass the path of an .onnx file")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError, onnx's errors, OSError
        raise ModelFormatError(f"{path} is not an ONNX model ({type(error).__name__}); export the model "
                               "to ONNX first (torch.onnx.export, tf2onnx) and pass the .onnx file") from error
    if not model.graph.node:
        raise ModelFormatError(f"{path} is not an ONNX model or has an empty graph; "
                               "export the model to ONNX first and pass the .onnx file")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        first_line = str(error).strip().splitlines()[0]
        raise ModelFormatError(f"{path} does not pass the ONNX checker: {first_line}; "
                               "re-export it with a current exporter") from error
    return model


def check_runnable(model: onnx.ModelProto, path: Path) -> None:
    """Raise UnsupportedModelError when onnxruntime cannot load the model."""
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            raise UnsupportedModelError(f"{path}: operator {node.op_type!r} (node {node.name!r}) is not an "
                                        "ONNX operator; replace it or export with standard operators")
    try:
        open_session(model.SerializeToString(), threads=1)
    except Exception as error:  # onnxruntime raises its own Fail / NotImplemented / InvalidGraph
        message = str(error).strip().splitlines()[-1][:300]
        raise UnsupportedModelError(f"{path}: onnxruntime cannot load this model ({message}); replace the "
                                    "unsupported operator or re-export with a supported opset") from error


def outputs_of(model: onnx.ModelProto, feeds: tuple[Feed, ...]) -> list[list[np.ndarray]]:
    session = open_session(model.SerializeToString(), threads=1)
    return [session.run(None, feed) for feed in feeds]


def assert_unchanged(reference: list[list[np.ndarray]], model: onnx.ModelProto, feeds: tuple[Feed, ...],
                     *, step: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    """Raise NormalizationError when `model`'s outputs differ from `reference`."""
    for expected_outputs, actual_outputs in zip(reference, outputs_of(model, feeds)):
        for expected, actual in zip(expected_outputs, actual_outputs):
            scale = float(np.abs(expected).max()) if expected.size else 0.0
            if expected.shape != actual.shape or not np.allclose(actual, expected, rtol=rtol, atol=atol * max(scale, 1.0)):
                worst = float(np.abs(np.asarray(actual, np.float64) - expected).max()) if expected.shape == actual.shape else None
                raise NormalizationError(f"{step} changed the model's outputs (max abs difference {worst}); "
                                         "this transform is not safe for this model")


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name: the quantizer and the report refer to layers by name."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type.lower()}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)
    return model


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    keep = []
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def initializers_out_of_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    names = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return model


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if version >= MIN_OPSET:
        return model
    return onnx.version_converter.convert_version(model, MIN_OPSET)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's symbolic shape inference, falling back to onnx's own."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        if inferred is not None:
            return inferred
    except Exception as error:  # the tool raises bare Exceptions on unknown ops
        logger.info("symbolic shape inference failed (%s); using onnx shape inference", error)
    return onnx.shape_inference.infer_shapes(model)


def flush_subnormal_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Set float32 weights below float32's smallest normal number (about 1.2e-38) to 0.

    Training with weight decay leaves such values behind; they add nothing to any
    output, but x86 CPUs multiply subnormal numbers tens of times slower than normal
    ones. A text recognizer trained with scikit-learn (examples/ocr) had 74 of them and
    ran about 4 times slower than the same model without them.
    """
    tiny = np.finfo(np.float32).tiny
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        values = onnx.numpy_helper.to_array(tensor)
        subnormal = (values != 0) & (np.abs(values) < tiny)
        if subnormal.any():
            model.graph.initializer[index].CopyFrom(
                onnx.numpy_helper.from_array(np.where(subnormal, np.float32(0), values), tensor.name))
            logger.info("flushed subnormal weights tensor=%s count=%d", tensor.name, int(subnormal.sum()))
    return model


TRANSFORMS: list[tuple[str, Transform]] = [
    ("naming nodes", name_nodes),
    ("moving Constant nodes to initializers", constants_to_initializers),
    ("removing initializers from graph inputs", initializers_out_of_inputs),
    (f"converting to opset {MIN_OPSET}", upgrade_opset),
    ("inferring shapes", infer_shapes),
    ("flushing subnormal weights to zero", flush_subnormal_weights),
]


def normalize(model: onnx.ModelProto, feeds: tuple[Feed, ...],
              progress: Callable[[str], None] = lambda _: None) -> tuple[onnx.ModelProto, list[str]]:
    """Apply each transform, keep it only when outputs are unchanged; returns (model, notes)."""
    reference = outputs_of(model, feeds)
    notes: list[str] = []
    for step, transform in TRANSFORMS:
        progress(f"normalize: {step}")
        candidate = onnx.ModelProto()
        candidate.CopyFrom(model)
        try:
            candidate = transform(candidate)
            assert_unchanged(reference, candidate, feeds, step=step)
        except Exception as error:  # any failure of an optional transform leaves the model as it was
            logger.warning("normalize step=%r skipped: %s", step, error)
            notes.append(f"skipped {step}: {error}")
            continue
        model = candidate
    return model, notes


def optimize_graph(model: onnx.ModelProto, feeds: tuple[Feed, ...]) -> onnx.ModelProto:
    """onnxruntime's portable (basic) optimizations, saved offline: constant folding,
    redundant node elimination, Conv+BN / Conv+Add / Conv+Mul folding. Only standard
    ONNX operators come out, so any runtime can load the result."""
    with tempfile.TemporaryDirectory(prefix="fleetcast-optimize-") as workdir:
        target = Path(workdir) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(target)
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(target))
    optimized = infer_shapes(name_nodes(optimized))
    assert_unchanged(outputs_of(model, feeds), optimized, feeds, step="graph optimization")
    return optimized

