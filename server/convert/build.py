"""Builds a job's targets: convert, load with the device back end, compare, time.

Figures (a variant's `metrics`), measured on the building machine:
- `backend`, `accelerator`: what ran it here;
- `latency_ms_1t`: median of timed runs, one thread; `latency_ratio`: that over the
  original on its own runtime (onnxruntime for ONNX, LiteRT for TFLite), the two timed
  in alternation in the same run so machine load affects both alike;
- `max_abs_diff`, `cosine`: its outputs against the original's on the golden inputs;
  `within_budget`: every output within `TOLERANCE` (atol, rtol) of the original's;
- `measured_on`: "build machine" (devices' own figures come from telemetry).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from fleetcast.server.builds import BuiltVariant
from fleetcast.server.convert.targets import TARGETS, ConversionError

logger = logging.getLogger(__name__)

TOLERANCE: Final = (1e-3, 1e-3)     # (atol, rtol) a float32 conversion must stay within
RKNN_TOLERANCE: Final = (1e-2, 1e-2)  # Rockchip NPUs compute in FP16
ORIGINAL_BACKEND: Final = {"onnx": "onnxruntime", "tflite": "litert"}


def session_for(path: Path, fmt: str) -> Any:
    """A session of the agent back end that devices use for `fmt`, loaded here on the CPU."""
    from fleetcast.agent import backends
    from fleetcast.agent.errors import AgentError
    from fleetcast.proto import formats

    name = formats.get(fmt).backends[0]
    try:
        return backends.backend(name).load(path, threads=1, hardware_class="x86-cpu")
    except (AgentError, ImportError) as e:
        raise ConversionError(f"the {fmt} build does not load with {name} here: {e}") from e


def _by_position(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Converters may rename outputs: match by name, else by order."""
    if set(outputs) == set(reference):
        return dict(outputs)
    return dict(zip(reference, outputs.values()))


def _time(run: Callable[[], Any], other: Callable[[], Any], rounds: int) -> tuple[float, float]:
    """Median ms of `run` and `other`, timed in alternation."""
    a, b = [], []
    for _ in range(rounds):
        for fn, into in ((run, a), (other, b)):
            start = time.perf_counter()
            fn()
            into.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(a), statistics.median(b)


def _accuracy(outputs: dict[str, np.ndarray], reference: Mapping[str, np.ndarray], fmt: str,
              tolerance: tuple[float, float]) -> dict[str, Any]:
    atol, rtol = tolerance
    diffs, cosines, within = [], [], True
    for name, want in reference.items():
        got = outputs[name].reshape(want.shape) if outputs[name].size == want.size else outputs[name]
        outputs[name] = got
        if got.shape != want.shape:
            raise ConversionError(f"the {fmt} build's output {name!r} has shape {got.shape}, the original {want.shape}")
        d = np.abs(got.astype(np.float64) - want.astype(np.float64))
        diffs.append(float(d.max(initial=0.0)))
        within = within and bool(np.allclose(got, want, atol=atol, rtol=rtol))
        norm = float(np.linalg.norm(got) * np.linalg.norm(want))
        cosines.append(float(np.dot(got.ravel(), want.ravel()) / norm) if norm else 1.0)
    return {"max_abs_diff": max(diffs, default=0.0), "cosine": min(cosines, default=1.0), "within_budget": within,
            "tolerance": list(tolerance)}


def measure(path: Path, fmt: str, source: Path, source_format: str, feeds: Mapping[str, np.ndarray],
            rounds: int = 30) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metrics, this build's outputs on `feeds`, named as the original's)."""
    built = session_for(path, fmt)
    original = session_for(source, source_format)
    reference = original.run(feeds)
    outputs = _by_position(built.run(feeds), reference)
    accuracy = _accuracy(outputs, reference, fmt, TOLERANCE)
    for _ in range(3):   # warm both
        built.run(feeds)
        original.run(feeds)
    ms, original_ms = _time(lambda: built.run(feeds), lambda: original.run(feeds), rounds)
    metrics = {
        "backend": built.backend, "accelerator": getattr(built, "accelerator", "cpu"),
        "latency_ms_1t": round(ms, 4), "latency_ratio": round(ms / original_ms, 4) if original_ms else None,
        "original_backend": original.backend, **accuracy,
        "size_bytes": path.stat().st_size, "measured_on": "build machine",
    }
    return metrics, outputs


def simulate(path: Path, fmt: str, source: Path, source_format: str, feeds: Mapping[str, np.ndarray],
             *, platform: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An RKNN build measured in rknn-toolkit2's simulator: outputs only (no NPU timing here)."""
    from fleetcast.server.convert import rknn

    python = rknn.toolkit_python()
    assert python is not None   # convert() checked it
    with tempfile.TemporaryDirectory(prefix="rknn-sim-") as tmp:
        np.savez(Path(tmp) / "in.npz", **dict(feeds))
        rknn.simulate(source, Path(tmp) / "in.npz", Path(tmp) / "out.npz", platform=platform, python=python)
        with np.load(Path(tmp) / "out.npz") as npz:
            simulated = [npz[k] for k in npz.files]
    reference = session_for(source, source_format).run(feeds)
    outputs = dict(zip(reference, simulated))
    metrics = {"backend": "rknn", "accelerator": "npu", "platform": platform, "latency_ms_1t": None,
               "latency_ratio": None, **_accuracy(outputs, reference, fmt, RKNN_TOLERANCE),
               "size_bytes": path.stat().st_size, "measured_on": "rknn-toolkit2 simulator (outputs only)"}
    return metrics, outputs


def build_targets(source: Path, source_format: str, targets: Sequence[str], feeds: Mapping[str, np.ndarray],
                  work: Path, progress: Callable[[str], None]) -> tuple[list[BuiltVariant], dict[str, str]]:
    """Builds each target; returns (the built ones, target -> why it was not built)."""
    built: list[BuiltVariant] = []
    errors: dict[str, str] = {}
    for name in targets:
        target = TARGETS[name]
        progress(f"converting {name}")
        out = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
        try:
            path = target.convert(source, source_format, out)
            try:
                if target.format == "rknn":
                    metrics, outputs = simulate(path, target.format, source, source_format, feeds,
                                                platform=name.removeprefix("rknn-"))
                else:
                    metrics, outputs = measure(path, target.format, source, source_format, feeds)
            except (KeyError, RuntimeError, ValueError) as e:   # a back end failing on the converted model
                raise ConversionError(f"the {name} build does not run like the original: {str(e)[:300]}") from e
        except ConversionError as e:
            logger.warning("target not built target=%s: %s", name, e)
            errors[name] = str(e)
            continue
        logger.info("target built target=%s latency_ratio=%s max_abs_diff=%.3g", name,
                    metrics["latency_ratio"], metrics["max_abs_diff"])
        tolerance = RKNN_TOLERANCE if target.format == "rknn" else (1e-4, 1e-3)   # golden: the device vs this run
        built.append(BuiltVariant(variant=name, format=target.format, path=path, metrics=metrics,
                                  golden_outputs=outputs, golden_tolerance=tolerance))
    return built, errors
