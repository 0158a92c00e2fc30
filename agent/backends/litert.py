"""The LiteRT back end: `.tflite` models through `ai-edge-litert` (XNNPACK on the CPU),
or the older `tflite_runtime` interpreter where only that is installed.

An interpreter is not safe to call from two threads, so a session serialises calls on
one lock; inputs whose shape differs from the allocated one resize the interpreter.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import numpy as np

from fleetcast.agent.backends import Probe, TensorSpec
from fleetcast.agent.errors import ActivationError, IncompatibleModelError

logger = logging.getLogger(__name__)

PACKAGES: Final = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


def interpreter_module() -> tuple[ModuleType, str]:
    """(the interpreter module, "package version"); raises IncompatibleModelError when none imports."""
    import importlib
    import importlib.metadata

    reasons = []
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            reasons.append(f"{name.split('.')[0]}: {e}")
            continue
        dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}[name.split(".")[0]]
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return module, f"{dist} {version}"
    raise IncompatibleModelError("no LiteRT interpreter is installed (pip install ai-edge-litert): "
                                 + "; ".join(reasons))


def _specs(details: Sequence[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
    specs = []
    for d in details:
        signature = d.get("shape_signature")
        shape = signature if signature is not None and len(signature) else d["shape"]
        specs.append(TensorSpec(d["name"], np.dtype(d["dtype"]).name,
                                tuple(int(x) if int(x) > 0 else None for x in shape)))
    return tuple(specs)


class LiteRtSession:
    backend = "litert"
    accelerator = "cpu"

    def __init__(self, interpreter: Any) -> None:
        self._interpreter = interpreter
        self._lock = threading.Lock()
        self._in = interpreter.get_input_details()
        self._out = interpreter.get_output_details()
        self.inputs = _specs(self._in)
        self.outputs = _specs(self._out)
        self.output_names = tuple(s.name for s in self.outputs)

    def run_values(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        it = self._interpreter
        with self._lock:
            for detail in self._in:
                value = np.asarray(inputs[detail["name"]], dtype=detail["dtype"])
                if tuple(value.shape) != tuple(it.get_input_details()[self._in.index(detail)]["shape"]):
                    it.resize_tensor_input(detail["index"], list(value.shape))
                    it.allocate_tensors()
                it.set_tensor(detail["index"], value)
            it.invoke()
            return [np.array(it.get_tensor(d["index"])) for d in self._out]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.run_values(inputs)))


# y = relu(x) on a 1x4 float tensor: the probe model, exactly the bytes that
# tests/support/tflite_models.py `relu()` builds (a unit test checks they agree), kept
# here so a device needs no flatbuffers schema package to probe.
PROBE_MODEL_B64: Final = (
    "GAAAAFRGTDMAAA4AGAAUABAADAAIAAQADgAAADAAAAAQAAAAMAAAADQAAAADAAAAFAAAAGZsZWV0Y2FzdCB0ZXN0IG1vZGVs"
    "AAAAAAEAAAD4AAAAAQAAADAAAAABAAAAEAAAAAwACgAJAAAAAAAEAAwAAAATAAAAABMOABgAFAAMAAgAEAAEAA4AAAAUAAAA"
    "HAAAACAAAAAkAAAAKAAAAAQAAABtYWluAAAAAAEAAAABAAAAAQAAAAAAAAABAAAAHAAAAAIAAABcAAAALAAAAAAACgAMAAAA"
    "CAAEAAoAAAAIAAAADAAAAAEAAAABAAAAAQAAAAAAAADg////FAAAAAQAAAACAAAAAQAAAAQAAAABAAAAeQAAAAwADAAIAAAA"
    "AAAEAAwAAAAUAAAABAAAAAIAAAABAAAABAAAAAEAAAB4AAAABAAEAAQAAAA="
)


def tiny_model() -> bytes:
    return base64.b64decode("".join(PROBE_MODEL_B64))


class LiteRtBackend:
    name = "litert"
    formats = frozenset({"tflite"})

    def probe(self, hardware_class: str) -> Probe:
        try:
            _, version = interpreter_module()
        except IncompatibleModelError as e:
            return Probe(self.name, False, detail=str(e))
        session = self.load(tiny_model(), threads=1, hardware_class=hardware_class)
        out = session.run({session.inputs[0].name: np.array([[-1.0, 0.0, 1.0, 2.0]], np.float32)})
        got = next(iter(out.values()))
        if not np.array_equal(got, [[0.0, 0.0, 1.0, 2.0]]):
            return Probe(self.name, False, version, detail=f"probe model gave {got.tolist()}")
        return Probe(self.name, True, version, "cpu")

    def load(self, model: Path | bytes, *, threads: int, hardware_class: str) -> LiteRtSession:
        module, version = interpreter_module()
        try:
            if isinstance(model, bytes):
                interpreter = module.Interpreter(model_content=model, num_threads=threads)
            else:
                interpreter = module.Interpreter(model_path=str(model), num_threads=threads)
            interpreter.allocate_tensors()
        except Exception as e:  # the interpreter raises ValueError/RuntimeError with its own text
            raise ActivationError(f"LiteRT could not load the model: {str(e)[:400]}") from e
        logger.info("loaded model with %s threads=%d", version, threads)
        return LiteRtSession(interpreter)
