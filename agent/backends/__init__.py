"""Inference back ends: plug-ins chosen by model format and hardware class.

A back end says which formats it loads and whether it can run here
(`available()`: its package imports and its hardware is present), and loads a model
(a file, or the bytes of a package the agent decoded) into a `Session`. Only onnxruntime ships today. TFLite (`tflite_runtime`),
OpenVINO, TensorRT and RKNN plug in here: add a module with a class implementing
`Backend` and list it in `_CANDIDATES`; `available()` must be true only where the
package and the hardware really exist, never faked.

Back ends raise only `IncompatibleModelError` (cannot load this model here) and
`ActivationError` (the model failed to load or run), chaining the cause.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fleetcast.agent.errors import IncompatibleModelError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                        # numpy dtype name, e.g. "float32"
    shape: tuple[int | str | None, ...]


class Session(Protocol):
    """A loaded model, called concurrently from many threads.

    `run_values(inputs)` returns the outputs in `output_names` order: the serving hot
    path calls it (back ends make it as thin as they can); `run` is the dict form.
    """

    backend: str
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    output_names: tuple[str, ...]
    run_values: Callable[[Mapping[str, np.ndarray]], Sequence[np.ndarray]]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    name: str
    formats: frozenset[str]

    def available(self) -> bool: ...

    def load(self, model: Path | bytes, *, threads: int, hardware_class: str) -> Session: ...


def _candidates() -> list[Backend]:
    from fleetcast.agent.backends.onnxruntime import OnnxRuntimeBackend

    return [OnnxRuntimeBackend()]


def available_backends() -> list[str]:
    """Names of the back ends that can run on this device, as reported at enrollment."""
    return [b.name for b in _candidates() if b.available()]


def choose(fmt: str, hardware_class: str) -> Backend:
    """The first available back end that loads `fmt` (a package: what it decodes to).

    Raises IncompatibleModelError.
    """
    from fleetcast.agent.packages import runnable_format

    fmt = runnable_format(fmt)
    for backend in _candidates():
        if fmt in backend.formats and backend.available():
            return backend
    raise IncompatibleModelError(
        f"no back end on this {hardware_class} device loads format {fmt!r} "
        f"(available: {', '.join(available_backends()) or 'none'})")
