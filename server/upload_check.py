"""The upload check: an uploaded model's test inference, in a child process with limits.

An operator upload is untrusted input: a few hundred bytes of ONNX can loop forever
(`Loop` with M=2^62) or allocate gigabytes (`ConstantOfShape`). So the check (load,
onnx.checker, an onnxruntime session, one inference on the golden or generated
inputs, the golden file written) runs in a child process forked from a forkserver
that has the libraries imported, with `RLIMIT_AS` set to `memory_bytes` and killed
after `time_s` of wall time. What it computes comes back as a golden `.npz` file it
wrote (bounded to `max_output_bytes` of arrays) and the input/output specs.

`check_upload(path, format=...)` is the one entry point; `CHECKS` maps a model format
to the function run in the child (`check_model` for every format that `inspection.open_upload` loads).
Failures raise the server's errors: `ModelInvalid`, `GoldenMismatch`, `InvalidRequest`
for what the child found, `ModelTooCostly` for a limit it crossed.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import resource
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fleetcast.server.errors import FleetcastError, GoldenMismatch, InvalidRequest, ModelInvalid, ModelTooCostly

logger = logging.getLogger(__name__)

MiB: Final = 1024**2


@dataclass(frozen=True, kw_only=True)
class CheckLimits:
    time_s: float = 60.0                  # wall time of the whole check
    memory_bytes: int = 4096 * MiB        # the child's address space (RLIMIT_AS)
    max_output_bytes: int = 256 * MiB     # golden arrays, given or computed, unpacked


@dataclass(frozen=True)
class CheckedUpload:
    inputs: Mapping[str, Mapping[str, Any]]    # name -> {"dtype", "shape"}
    outputs: Mapping[str, Mapping[str, Any]]
    golden_path: Path                          # the golden .npz the child wrote (inputs and outputs)


def check_model(model_path: str, golden_path: str | None, out_path: str, sha256: str,
                max_output_bytes: int, calibration_path: str | None, calibration_limits: Any) -> dict[str, Any]:
    """Runs in the child: the model check (see registry) and the golden file written to `out_path`."""
    from fleetcast.server import registry

    return registry.check_model_in_child(
        Path(model_path), None if golden_path is None else Path(golden_path), Path(out_path), sha256=sha256,
        max_output_bytes=max_output_bytes, calibration_path=None if calibration_path is None else Path(calibration_path),
        calibration_limits=calibration_limits)


# format -> the function the child runs: (model, golden or None, out, sha256, max_output_bytes,
# calibration or None, calibration limits) -> specs. Every uploadable format loads through
# `inspection.open_upload`, so each is a row naming the same check.
CHECKS: Final[Mapping[str, Callable[..., dict[str, Any]]]] = {"onnx": check_model, "tflite": check_model}

# Errors the child may raise and the parent raises again by name, with the child's message.
PASSED_ON: Final[Mapping[str, type[FleetcastError]]] = {
    cls.__name__: cls for cls in (InvalidRequest, ModelInvalid, GoldenMismatch, ModelTooCostly)
}

_context_lock = threading.Lock()
_context: Any = None


def _forkserver() -> Any:
    """The multiprocessing context: a forkserver with the heavy imports done once."""
    global _context
    with _context_lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["numpy", "onnx", "onnxruntime", "fleetcast.server.registry"])
            _context = ctx
        return _context


def _child(conn: multiprocessing.connection.Connection, memory_bytes: int, fmt: str, args: tuple[Any, ...]) -> None:
    """The child's entry point: limits first, then the check; one message back."""
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        conn.send(("ok", CHECKS[fmt](*args)))
    except MemoryError:
        conn.send(("memory", ""))
    except FleetcastError as e:
        conn.send((type(e).__name__ if type(e).__name__ in PASSED_ON else "ModelInvalid", e.message))
    except BaseException as e:  # onnxruntime's std::bad_alloc arrives as RuntimeError
        text = str(e)
        kind = "memory" if "bad_alloc" in text or "Failed to allocate" in text else "ModelInvalid"
        conn.send((kind, f"the model check failed ({type(e).__name__}): {text[:400]}"))
    finally:
        conn.close()


def check_upload(path: Path, *, format: str, golden: Path | None, out: Path, sha256: str,
                 limits: CheckLimits, calibration: Path | None = None,
                 calibration_limits: Any = None) -> CheckedUpload:
    """Checks one uploaded model in a bounded child process; raises the server's errors."""
    if format not in CHECKS:
        raise ModelInvalid(f"a {format[:40]} file cannot be uploaded: upload one of {', '.join(sorted(CHECKS))}")
    ctx = _forkserver()
    receive, send = ctx.Pipe(duplex=False)
    args = (str(path), None if golden is None else str(golden), str(out), sha256, limits.max_output_bytes,
            None if calibration is None else str(calibration), calibration_limits)
    child = ctx.Process(target=_child, args=(send, limits.memory_bytes, format, args), daemon=True,
                        name="fleetcast-upload-check")
    child.start()
    send.close()
    try:
        message = receive.recv() if receive.poll(limits.time_s) else ("time", "")
    except EOFError:   # the child died without a word: killed by the kernel, or a crash in native code
        message = ("died", "")
    finally:
        receive.close()
        child.join(0 if message[0] == "time" else 5)   # a child that answered exits by itself
        if child.is_alive():
            child.kill()
            child.join(10)
    kind, payload = message
    if kind == "died" and child.exitcode not in (-signal.SIGKILL, 1):
        kind, payload = "ModelInvalid", (f"the model crashed the check's process (exit status {child.exitcode}): "
                                         "onnxruntime cannot run it safely; check the model with onnx.checker")
    if kind == "ok":
        return CheckedUpload(inputs=payload["inputs"], outputs=payload["outputs"], golden_path=out)
    out.unlink(missing_ok=True)
    logger.warning("upload check refused sha256=%s reason=%s exitcode=%s", sha256, kind, child.exitcode)
    if kind == "time":
        raise ModelTooCostly(f"the model's test inference ran longer than {limits.time_s:g} s and was stopped: "
                             "check the model for unbounded loops, or raise --upload-check-time-s")
    if kind in {"memory", "died"}:
        raise ModelTooCostly(f"the model's test inference needed more than {limits.memory_bytes} bytes of memory "
                             f"(the check's process {'ran out of memory' if kind == 'memory' else 'was killed'}): "
                             "check the model for huge tensors, or raise --upload-check-memory-bytes")
    raise PASSED_ON.get(kind, ModelInvalid)(payload)
