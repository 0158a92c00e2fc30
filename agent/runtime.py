"""The serving model: inference that never stops during a swap, and the smoke test.

`Runtime.infer` takes no lock to find the model: it reads the current `LoadedModel`
reference once per call, so a concurrent `swap` never blocks or fails it. A new
model is swapped in only after it loaded and passed its smoke test; until then the
old one serves in-flight and new calls alike, and calls that started on the old one
finish on it.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from fleetcast.agent import backends, packages
from fleetcast.agent.errors import ActivationError, InferenceError, NotServingError
from fleetcast.agent.slots import InstalledModel
from fleetcast.agent.telemetry import Counters, ModelKey, Recorder

logger = logging.getLogger(__name__)

_MAX_GOLDEN_ENTRIES: Final = 128
MAX_MODEL_BYTES: Final = 512 * 1024**2   # the agent's default max_artifact_bytes
_clock = time.perf_counter
_NUMERIC_KINDS: Final = frozenset("biuf")


@dataclass(frozen=True)
class LoadedModel:
    installed: InstalledModel
    session: backends.Session
    counters: Counters

    def __post_init__(self) -> None:
        # Bound once here so the hot path does one attribute lookup per step.
        names = tuple(self.session.output_names)
        object.__setattr__(self, "run_values", self.session.run_values)
        object.__setattr__(self, "record_latency", self.counters.record_latency)
        object.__setattr__(self, "output_names", names)
        object.__setattr__(self, "single_output", names[0] if len(names) == 1 else None)

    @property
    def key(self) -> ModelKey:
        return self.counters.key


def load_model(installed: InstalledModel, *, recorder: Recorder, threads: int,
               hardware_class: str, max_model_bytes: int = MAX_MODEL_BYTES) -> LoadedModel:
    """Loads a slot's model with the back end chosen for its format and this hardware.

    A package (fcpack) is decoded in memory first, refused past `max_model_bytes`.
    """
    a = installed.assignment
    backend = backends.choose(a.format, hardware_class)
    model = packages.unpack(installed.model_path, a.format, max_bytes=max_model_bytes, signed_length=a.length)
    session = backend.load(model, threads=threads, hardware_class=hardware_class)
    key = ModelKey(model=a.model, version=a.version, variant=a.variant, backend=backend.name)
    return LoadedModel(installed=installed, session=session, counters=recorder.counters_for(key))


def read_golden(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, expected outputs) from golden.npz bytes (`input:<name>`, `output:<name>`)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if len(npz.files) > _MAX_GOLDEN_ENTRIES:
                raise ActivationError(f"golden file has more than {_MAX_GOLDEN_ENTRIES} entries")
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError) as e:
        raise ActivationError(f"golden file is not a readable npz: {e}") from e
    inputs = {k.removeprefix("input:"): v for k, v in arrays.items() if k.startswith("input:")}
    outputs = {k.removeprefix("output:"): v for k, v in arrays.items() if k.startswith("output:")}
    if not inputs or not outputs:
        raise ActivationError("golden file needs input:<name> and output:<name> arrays")
    return inputs, outputs


def smoke_test(model: LoadedModel) -> None:
    """Runs the golden inputs and compares with the golden outputs; raises ActivationError.

    With no golden file the model must at least run on zeros of its input shapes.
    """
    installed = model.installed
    golden = installed.assignment.golden
    if golden is None or installed.golden_path is None:
        _run_checked(model, _zeros_for(model.session))
        return
    inputs, expected = read_golden(installed.golden_path.read_bytes())
    for _ in range(2):   # twice: a model whose output drifts between runs fails too
        _compare(_run_checked(model, inputs), expected, golden.atol, golden.rtol)
    logger.info("smoke test passed model=%s version=%s slot=%s", installed.assignment.model,
                installed.assignment.version, installed.slot)


def _compare(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
             atol: float, rtol: float) -> None:
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            raise ActivationError(f"smoke test: model has no output {name!r}")
        if got.shape != want.shape:
            raise ActivationError(f"smoke test: output {name!r} has shape {got.shape}, golden {want.shape}")
        if want.dtype.kind not in _NUMERIC_KINDS or got.dtype.kind not in _NUMERIC_KINDS:
            equal = np.array_equal(got, want)
            diff = "non-numeric"
        else:
            equal = bool(np.allclose(got, want, atol=atol, rtol=rtol))
            diff = f"{float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0)):.6g}"
        if not equal:
            raise ActivationError(
                f"smoke test: output {name!r} differs from golden: max abs diff {diff} "
                f"(atol {atol}, rtol {rtol})")


def _run_checked(model: LoadedModel, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    try:
        return model.session.run(inputs)
    except Exception as e:  # back ends raise their own types on bad input
        raise ActivationError(f"smoke test: the model failed to run: {e}") from e


def _zeros_for(session: backends.Session) -> dict[str, np.ndarray]:
    return {
        spec.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in spec.shape],
                            dtype=np.dtype(spec.dtype))
        for spec in session.inputs
    }


def infer_on(model: LoadedModel, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One inference on `model`, counted in its counters; raises InferenceError."""
    start = _clock()
    try:
        values = model.run_values(inputs)
    except Exception as e:
        model.counters.record((_clock() - start) * 1000.0, False)
        raise InferenceError(f"inference failed: {e}") from e
    model.record_latency((_clock() - start) * 1000.0)
    single = model.single_output
    if single is not None:
        return {single: values[0]}
    return dict(zip(model.output_names, values))


def counted_as(model: LoadedModel, caller: str, recorder: Recorder) -> LoadedModel:
    """The same loaded session, its inferences counted under `caller`'s own label."""
    return dataclasses.replace(model, counters=recorder.counters_for(dataclasses.replace(model.key, caller=caller)))


class Runtime:
    """Holds the model being served; `infer` is safe from any number of threads."""

    def __init__(self) -> None:
        self._model: LoadedModel | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._model

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self._model            # read once: a swap during this call does not affect it
        if model is None:
            raise NotServingError("no model is being served yet")
        return infer_on(model, inputs)

    def swap(self, new: LoadedModel | None) -> LoadedModel | None:
        """Serves `new` from the next call on; returns the model it replaced."""
        old, self._model = self._model, new
        logger.info("serving model=%s version=%s slot=%s",
                    new.key.model if new else None, new.key.version if new else None,
                    new.installed.slot if new else None)
        return old
