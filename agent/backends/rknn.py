"""The RKNN back end: `.rknn` models on Rockchip NPUs (rk3588, rk3566, ...) through
`rknn-toolkit-lite2`, which exists only for aarch64 Linux with the NPU driver.

This is the code that runs on a board; on any other machine the probe reports it
unavailable with the reason (package missing, not aarch64, or no NPU driver).
"""

from __future__ import annotations

import logging
import platform
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from fleetcast.agent.backends import Probe, TensorSpec
from fleetcast.agent.errors import ActivationError, IncompatibleModelError

logger = logging.getLogger(__name__)

# The rknpu driver exposes one of these on boards that have it.
DRIVER_PATHS: Final = ("/sys/kernel/debug/rknpu", "/proc/device-tree/npu@fdab0000", "/dev/rknpu")


def _import() -> Any:
    if platform.machine() not in {"aarch64", "arm64"}:
        raise IncompatibleModelError(f"rknn-toolkit-lite2 runs only on aarch64 boards, not {platform.machine()}")
    try:
        from rknnlite.api import RKNNLite
    except ImportError as e:
        raise IncompatibleModelError(f"rknn-toolkit-lite2 is not installed (pip install rknn-toolkit-lite2): {e}") from e
    return RKNNLite


class RknnSession:
    backend = "rknn"
    accelerator = "npu"

    def __init__(self, runtime: Any, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
        self._runtime = runtime
        self._lock = threading.Lock()
        self.inputs = inputs
        self.outputs = outputs
        self.output_names = tuple(s.name for s in outputs)

    def run_values(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        names = [s.name for s in self.inputs]
        feeds = [np.ascontiguousarray(inputs[n]) for n in names] if set(names) <= set(inputs) \
            else [np.ascontiguousarray(v) for v in inputs.values()]
        with self._lock:
            outs = self._runtime.inference(inputs=feeds, data_format="nchw")
        if outs is None:
            raise RuntimeError("RKNNLite.inference returned no outputs")
        return [np.asarray(o) for o in outs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.run_values(inputs)))


class RknnBackend:
    name = "rknn"
    formats = frozenset({"rknn"})

    def probe(self, hardware_class: str) -> Probe:
        try:
            _import()
        except IncompatibleModelError as e:
            return Probe(self.name, False, detail=str(e))
        import importlib.metadata

        version = importlib.metadata.version("rknn-toolkit-lite2")
        if not any(Path(p).exists() for p in DRIVER_PATHS):
            return Probe(self.name, False, version, "npu", "no Rockchip NPU driver found "
                         f"({', '.join(DRIVER_PATHS)} are all absent)")
        # rknn models are built per NPU platform by the server: there is no tiny model
        # to load before one is delivered, so the driver's presence is the probe here.
        return Probe(self.name, True, version, "npu")

    def load(self, model: Path | bytes, *, threads: int, hardware_class: str) -> RknnSession:
        RKNNLite = _import()
        runtime = RKNNLite()
        path = str(model)
        if isinstance(model, bytes):
            raise ActivationError("the rknn back end loads .rknn files from a slot, not decoded bytes")
        if runtime.load_rknn(path) != 0 or runtime.init_runtime() != 0:
            runtime.release()
            raise ActivationError("RKNNLite could not load the model or start the NPU runtime")
        specs = _names(Path(path))
        logger.info("loaded model with rknn-toolkit-lite2 threads=%d", threads)
        return RknnSession(runtime, *specs)


def _names(model: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Input and output names, in order. An .rknn file does not keep the ONNX names, and
    RKNNLite cannot list them, so they come from the golden file beside it in the slot
    (`input:<name>` / `output:<name>`, written by the server from the original model)."""
    golden = model.parent / "golden.npz"
    inputs: list[str] = []
    outputs: list[str] = []
    if golden.is_file():
        with np.load(golden, allow_pickle=False) as npz:
            inputs = [k.removeprefix("input:") for k in npz.files if k.startswith("input:")]
            outputs = [k.removeprefix("output:") for k in npz.files if k.startswith("output:")]
    return (tuple(TensorSpec(n, "float32", ()) for n in inputs or ["input0"]),
            tuple(TensorSpec(n, "float32", ()) for n in outputs or ["output0"]))
