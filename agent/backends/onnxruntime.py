"""The onnxruntime back end: CPU by default, TensorRT/CUDA EPs on jetson where present."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime

from fleetcast.agent.backends import TensorSpec
from fleetcast.agent.errors import ActivationError

logger = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
}
# Execution providers to prefer per hardware class, best first; CPU is always last.
_PREFERRED = {"jetson": ("TensorrtExecutionProvider", "CUDAExecutionProvider")}


def providers_for(hardware_class: str) -> list[str]:
    present = set(onnxruntime.get_available_providers())
    chosen = [p for p in _PREFERRED.get(hardware_class, ()) if p in present]
    return [*chosen, "CPUExecutionProvider"]


def _spec(arg: onnxruntime.NodeArg) -> TensorSpec:
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), tuple(arg.shape))


class OnnxRuntimeSession:
    backend = "onnxruntime"

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self._session = session
        self.inputs = tuple(_spec(a) for a in session.get_inputs())
        self.outputs = tuple(_spec(a) for a in session.get_outputs())
        self.output_names = tuple(o.name for o in self.outputs)
        # A C-level partial: the hot path adds no Python frame of ours around onnxruntime.
        self.run_values = functools.partial(session.run, list(self.output_names))
        self.providers = tuple(session.get_providers())

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.run_values(inputs)))


class OnnxRuntimeBackend:
    name = "onnxruntime"
    formats = frozenset({"onnx"})

    def available(self) -> bool:
        return True   # imported above; the CPU provider is always present

    def load(self, model: Path | bytes, *, threads: int, hardware_class: str) -> OnnxRuntimeSession:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = providers_for(hardware_class)
        try:
            source = model if isinstance(model, bytes) else str(model)
            session = onnxruntime.InferenceSession(source, sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ActivationError(f"onnxruntime could not load the model: {e}") from e
        where = f"{len(model)} bytes" if isinstance(model, bytes) else model.parent.name
        logger.info("loaded model=%s providers=%s threads=%d", where,
                    ",".join(session.get_providers()), threads)
        return OnnxRuntimeSession(session)
