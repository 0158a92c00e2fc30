"""Inference back ends: plug-ins chosen by model format and what this device can load.

A back end says which formats it loads (`fleetcast.proto.formats` lists, per format,
the back ends that run it, best first), probes whether it really runs here
(`probe()`: its package imports, its device is present, and a tiny model it builds
itself loads and runs), and loads a model (a file, or the bytes of a package the agent
decoded) into a `Session`.

| module | formats | package | accelerator |
|---|---|---|---|
| `onnxruntime` | onnx, fcpack | onnxruntime(-gpu) | cpu; cuda / tensorrt on jetson, checked after load |
| `litert` | tflite | ai-edge-litert, else tflite_runtime | cpu (XNNPACK) |
| `openvino` | openvino (IR) | openvino | cpu; myriad on movidius when that plugin exists |
| `mnn` | mnn | MNN | cpu |
| `rknn` | rknn | rknn-toolkit-lite2 (aarch64) | npu |

A back end is never faked: where its package or hardware is missing, its probe says
so and the agent neither reports nor uses it. The agent may narrow the set with
`configure(names)` once at start (the `--backends` option).

Back ends raise only `IncompatibleModelError` (cannot load this model here) and
`ActivationError` (the model failed to load or run), chaining the cause.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import numpy as np

from fleetcast.agent.errors import IncompatibleModelError
from fleetcast.proto import formats

logger = logging.getLogger(__name__)

# name -> module:class, in the order the agent reports them.
MODULES: Final[Mapping[str, str]] = {
    "onnxruntime": "fleetcast.agent.backends.onnxruntime:OnnxRuntimeBackend",
    "litert": "fleetcast.agent.backends.litert:LiteRtBackend",
    "openvino": "fleetcast.agent.backends.openvino:OpenVinoBackend",
    "mnn": "fleetcast.agent.backends.mnn:MnnBackend",
    "rknn": "fleetcast.agent.backends.rknn:RknnBackend",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                        # numpy dtype name, e.g. "float32"
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class Probe:
    """What starting a back end here showed: reported at enrollment."""

    name: str
    available: bool
    version: str = ""
    accelerator: str = ""             # "cpu", "cuda", "tensorrt", "myriad", "npu"
    detail: str = ""                  # why it is unavailable, or what it fell back to


class Session(Protocol):
    """A loaded model, called concurrently from many threads.

    `run_values(inputs)` returns the outputs in `output_names` order: the serving hot
    path calls it (back ends make it as thin as they can); `run` is the dict form.
    """

    backend: str
    accelerator: str
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    output_names: tuple[str, ...]
    run_values: Callable[[Mapping[str, np.ndarray]], Sequence[np.ndarray]]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    name: str
    formats: frozenset[str]

    def probe(self, hardware_class: str) -> Probe: ...

    def load(self, model: Path | bytes, *, threads: int, hardware_class: str) -> Session: ...


_enabled: frozenset[str] | None = None


def configure(names: Sequence[str] | None) -> None:
    """Limits this process to the back ends named (None or empty: all that probe)."""
    global _enabled
    unknown = [n for n in names or () if n not in MODULES]
    if unknown:
        raise ValueError(f"unknown back end(s) {', '.join(unknown)}: choose from {', '.join(MODULES)}")
    _enabled = frozenset(names) if names else None


@functools.cache
def backend(name: str) -> Backend:
    module, _, cls = MODULES[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


@functools.cache
def probe(name: str, hardware_class: str) -> Probe:
    """Probes one back end once per process; never raises."""
    try:
        result = backend(name).probe(hardware_class)
    except Exception as e:  # a broken install must not stop the agent: it reports the back end as absent
        result = Probe(name, False, detail=f"probe failed: {type(e).__name__}: {str(e)[:200]}")
    log = logger.info if result.available else logger.warning
    log("backend=%s available=%s version=%s accelerator=%s %s", name, result.available, result.version,
        result.accelerator, result.detail)
    return result


def probes(hardware_class: str) -> list[Probe]:
    """Every enabled back end's probe, in `MODULES` order, run in a child process so the
    agent does not keep back ends it never serves with in memory (OpenVINO alone is
    about 60 MiB); in this process when the child cannot run."""
    names = tuple(n for n in MODULES if _enabled is None or n in _enabled)
    return list(_probe_all(hardware_class, names))


_PROBE_CODE: Final = """
import dataclasses, json, sys
from fleetcast.agent import backends
found = [dataclasses.asdict(backends.probe(n, sys.argv[1])) for n in sys.argv[3:]]
open(sys.argv[2], "w").write(json.dumps(found))
"""


@functools.cache
def _probe_all(hardware_class: str, names: tuple[str, ...]) -> tuple[Probe, ...]:
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fleetcast-probe-") as tmp:
        out = f"{tmp}/probes.json"
        try:
            subprocess.run([sys.executable, "-c", _PROBE_CODE, hardware_class, out, *names], timeout=180,
                           check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            with open(out) as f:
                found = tuple(Probe(**doc) for doc in json.load(f))
        except (OSError, ValueError, TypeError, subprocess.SubprocessError) as e:
            logger.warning("back-end probe process failed (%s): probing in this process", e)
            return tuple(probe(n, hardware_class) for n in names)
    for p in found:
        log = logger.info if p.available else logger.warning
        log("backend=%s available=%s version=%s accelerator=%s %s", p.name, p.available, p.version,
            p.accelerator, p.detail)
    return found


def available_backends(hardware_class: str = "x86-cpu") -> list[str]:
    """Names of the back ends that really load a model here, as reported at enrollment."""
    return [p.name for p in probes(hardware_class) if p.available]


def choose(fmt: str, hardware_class: str) -> Backend:
    """The first available back end (in the format registry's order) that loads `fmt`.

    Raises IncompatibleModelError.
    """
    try:
        row = formats.get(fmt)
    except formats.FormatError as e:
        raise IncompatibleModelError(str(e)) from None
    tried = []
    for name in row.backends:   # probed here, in order, only as far as needed: each import costs memory
        if _enabled is not None and name not in _enabled:
            continue
        if probe(name, hardware_class).available:
            return backend(name)
        tried.append(name)
    raise IncompatibleModelError(
        f"no back end on this {hardware_class} device loads format {fmt!r} "
        f"(it needs {' or '.join(row.backends)}; unavailable here: {', '.join(tried) or 'none enabled'})")


def specs(items: Sequence[tuple[str, str, Sequence[int | str | None]]]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(name, dtype, tuple(shape)) for name, dtype, shape in items)
