"""The onnxruntime back end: CPU by default, TensorRT/CUDA EPs on jetson where present.

onnxruntime falls back to the CPU without raising when an execution provider fails to
start (the error goes only to its log), so after creating a session this back end
reads `session.get_providers()` and reports the provider really in use, with the
reason when it is not the one asked for.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import onnxruntime

from fleetcast.agent.backends import Probe, TensorSpec
from fleetcast.agent.errors import ActivationError

logger = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
}
# Execution providers to prefer per hardware class, best first; CPU is always last.
_PREFERRED: Final = {"jetson": ("TensorrtExecutionProvider", "CUDAExecutionProvider")}
ACCELERATORS: Final = {"TensorrtExecutionProvider": "tensorrt", "CUDAExecutionProvider": "cuda",
                       "CPUExecutionProvider": "cpu"}


def providers_for(hardware_class: str, present: Sequence[str] | None = None) -> list[str]:
    present = set(onnxruntime.get_available_providers() if present is None else present)
    chosen = [p for p in _PREFERRED.get(hardware_class, ()) if p in present]
    return [*chosen, "CPUExecutionProvider"]


def fallback_reason(hardware_class: str, present: Sequence[str], used: Sequence[str]) -> str:
    """Why the session does not run on this class's preferred provider; "" when it does
    (or the class prefers none)."""
    wanted = _PREFERRED.get(hardware_class, ())
    if not wanted or (used and used[0] in wanted):
        return ""
    missing = [p for p in wanted if p not in present]
    if len(missing) == len(wanted):
        return (f"{' and '.join(wanted)} are not in this onnxruntime build "
                f"(install onnxruntime-gpu): running on {ACCELERATORS.get(used[0], used[0]) if used else 'cpu'}")
    failed = [p for p in wanted if p in present and p not in used]
    return (f"{' and '.join(failed)} did not start (no usable GPU or driver): "
            f"onnxruntime fell back to {', '.join(used) or 'nothing'}")


def _spec(arg: onnxruntime.NodeArg) -> TensorSpec:
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), tuple(arg.shape))


class OnnxRuntimeSession:
    backend = "onnxruntime"

    def __init__(self, session: onnxruntime.InferenceSession, *, fallback: str = "") -> None:
        self._session = session
        self.inputs = tuple(_spec(a) for a in session.get_inputs())
        self.outputs = tuple(_spec(a) for a in session.get_outputs())
        self.output_names = tuple(o.name for o in self.outputs)
        # A C-level partial: the hot path adds no Python frame of ours around onnxruntime.
        self.run_values = functools.partial(session.run, list(self.output_names))
        self.providers = tuple(session.get_providers())
        self.accelerator = ACCELERATORS.get(self.providers[0], self.providers[0]) if self.providers else "cpu"
        self.fallback = fallback

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.run_values(inputs)))


def tiny_model() -> bytes:
    """A one-node ONNX model (y = relu(x), 1x4 float), built here for the probe."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


class OnnxRuntimeBackend:
    name = "onnxruntime"
    formats = frozenset({"onnx"})

    def probe(self, hardware_class: str) -> Probe:
        session = self.load(tiny_model(), threads=1, hardware_class=hardware_class)
        out = session.run({"x": np.array([[-1.0, 0.0, 1.0, 2.0]], np.float32)})["y"]
        if not np.array_equal(out, [[0.0, 0.0, 1.0, 2.0]]):
            return Probe(self.name, False, onnxruntime.__version__, detail=f"probe model gave {out.tolist()}")
        return Probe(self.name, True, onnxruntime.__version__, session.accelerator, session.fallback)

    def load(self, model: Path | bytes, *, threads: int, hardware_class: str) -> OnnxRuntimeSession:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        present = onnxruntime.get_available_providers()
        providers = providers_for(hardware_class, present)
        try:
            source = model if isinstance(model, bytes) else str(model)
            session = onnxruntime.InferenceSession(source, sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ActivationError(f"onnxruntime could not load the model: {e}") from e
        used = session.get_providers()
        fallback = fallback_reason(hardware_class, present, used)
        if fallback:
            logger.warning("onnxruntime provider fallback hardware_class=%s: %s", hardware_class, fallback)
        where = f"{len(model)} bytes" if isinstance(model, bytes) else model.parent.name
        logger.info("loaded model=%s providers=%s threads=%d", where, ",".join(used), threads)
        return OnnxRuntimeSession(session, fallback=fallback)
