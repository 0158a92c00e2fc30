"""The MNN back end: `.mnn` models through the MNN Python wheel (x86_64 and aarch64), CPU.

Uses MNN's module API (`MNN.nn.load_module_from_file`), which takes named inputs and
outputs; a session serialises calls, as MNN modules keep per-call state.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fleetcast.agent.backends import Probe, TensorSpec
from fleetcast.agent.errors import ActivationError, IncompatibleModelError

logger = logging.getLogger(__name__)


def _import() -> Any:
    try:
        import MNN
    except ImportError as e:
        raise IncompatibleModelError(f"MNN is not installed (pip install MNN): {e}") from e
    return MNN


def _info(MNN: Any, path: str) -> tuple[list[str], list[str], list[Any]]:
    """(input names, output names, each input's data format) the .mnn file declares."""
    probe = MNN.nn.load_module_from_file(path, [], [])
    info = probe.get_info() if probe is not None else None
    if info and info.get("inputNames") and info.get("outputNames"):
        declared = list(info.get("inputs") or [])
        F = MNN.expr
        layouts = [declared[i].data_format if i < len(declared) else F.NCHW for i in range(len(info["inputNames"]))]
        return list(info["inputNames"]), list(info["outputNames"]), layouts
    raise ActivationError("MNN could not read the model's input and output names: is it a .mnn file?")


class MnnSession:
    backend = "mnn"
    accelerator = "cpu"

    def __init__(self, MNN: Any, module: Any, inputs: list[str], outputs: list[str],
                 specs: tuple[TensorSpec, ...], layouts: list[Any]) -> None:
        self._layouts = layouts
        self._MNN = MNN
        self._module = module
        self._lock = threading.Lock()
        self._input_names = inputs
        self.inputs = specs
        self.outputs = tuple(TensorSpec(n, "float32", ()) for n in outputs)
        self.output_names = tuple(outputs)

    def run_values(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        F = self._MNN.expr
        feeds = []
        for name, layout in zip(self._input_names, self._layouts):
            value = np.ascontiguousarray(inputs[name], dtype=np.float32)
            feeds.append(F.const(value, list(value.shape), layout))
        with self._lock:
            outs = self._module.forward(feeds)
            values = [np.array(o.read(), dtype=np.float32) for o in (outs if isinstance(outs, list) else [outs])]
        if len(values) != len(self.output_names):
            raise RuntimeError(f"MNN returned {len(values)} outputs, the model declares {len(self.output_names)}: "
                               "check the input shapes")
        return values

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.run_values(inputs)))


class MnnBackend:
    name = "mnn"
    formats = frozenset({"mnn"})

    def probe(self, hardware_class: str) -> Probe:
        try:
            MNN = _import()
        except IncompatibleModelError as e:
            return Probe(self.name, False, detail=str(e))
        F = MNN.expr
        with tempfile.TemporaryDirectory(prefix="fleetcast-mnn-probe-") as tmp:
            path = os.path.join(tmp, "probe.mnn")
            x = F.placeholder([1, 4], F.NCHW)
            x.name = "x"
            y = F.relu(x)
            y.name = "y"
            F.save([y], path)
            session = self.load(Path(path), threads=1, hardware_class=hardware_class)
            got = session.run({"x": np.array([[-1.0, 0.0, 1.0, 2.0]], np.float32)})["y"]
        if not np.array_equal(got.reshape(1, 4), [[0.0, 0.0, 1.0, 2.0]]):
            return Probe(self.name, False, MNN.version(), detail=f"probe model gave {got.tolist()}")
        return Probe(self.name, True, MNN.version(), "cpu")

    def load(self, model: Path | bytes, *, threads: int, hardware_class: str) -> MnnSession:
        MNN = _import()
        with tempfile.TemporaryDirectory(prefix="fleetcast-mnn-") as tmp:
            path = str(model)
            if isinstance(model, bytes):
                path = os.path.join(tmp, "model.mnn")
                Path(path).write_bytes(model)
            try:
                inputs, outputs, layouts = _info(MNN, path)
                config = {"backend": "CPU", "numThread": threads}
                runtime = MNN.nn.create_runtime_manager((config,))
                module = MNN.nn.load_module_from_file(path, inputs, outputs, runtime_manager=runtime)
            except ActivationError:
                raise
            except Exception as e:  # MNN raises RuntimeError/ValueError with its own text
                raise ActivationError(f"MNN could not load the model: {str(e)[:400]}") from e
            if module is None:
                raise ActivationError("MNN could not load the model: the file is not a valid .mnn model")
        specs = tuple(TensorSpec(n, "float32", ()) for n in inputs)
        logger.info("loaded model with MNN %s threads=%d", MNN.version(), threads)
        return MnnSession(MNN, module, inputs, outputs, specs, layouts)
