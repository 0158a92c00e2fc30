"""Background compression jobs: an upload returns at once, its levels are built here.

`Builds.submit(job)` is safe from any thread. Bound to the app's event loop (in a
`cleanup_ctx`), it starts an asyncio task that runs the job in a worker thread;
unbound (scripts, unit tests) it runs the job in the caller's thread. `close()`
asks running jobs to stop (the job sees `stopping()` true at its next progress
step and raises `BuildStopped`), then awaits them, so shutdown never leaves a
thread writing into a closed store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class BuildStopped(BaseException):
    """Raised inside a job when the server stops; a BaseException so that the
    pipeline's per-level `except Exception` does not swallow it."""


@dataclass(frozen=True)
class BuiltVariant:
    """One variant the compression pipeline built: a file to store and its measurements."""

    variant: str
    format: str
    path: Path
    metrics: Mapping[str, Any]
    # A per-target build's outputs on the golden inputs, computed with the runtime that
    # runs it (none here can run it through onnxruntime), and their tolerance.
    golden_outputs: Mapping[str, np.ndarray] | None = None
    golden_tolerance: tuple[float, float] | None = None



@dataclass(frozen=True, kw_only=True)
class BuildJob:
    model: str
    version: str
    work: Path                    # owned by the job; removed when it ends
    model_path: Path              # inside `work`
    levels: tuple[str, ...]
    calibration_dir: Path | None  # inside `work`, the pipeline's directory format
    eval_dir: Path | None
    targets: tuple[str, ...] = ()     # per-target conversions (fleetcast.server.convert)
    source_format: str = "onnx"       # the upload's format (fleetcast.proto.formats)


Runner = Callable[[BuildJob, Callable[[], bool]], None]


class Builds:
    def __init__(self, run: Runner) -> None:
        self._run = run
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = threading.Event()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stop.clear()

    def stopping(self) -> bool:
        return self._stop.is_set()

    def submit(self, job: BuildJob) -> None:
        loop = self._loop
        if loop is None:
            self._run(job, self.stopping)
            return
        loop.call_soon_threadsafe(self._start, job)

    def _start(self, job: BuildJob) -> None:
        task = asyncio.get_running_loop().create_task(self._job(job), name=f"compress {job.model}@{job.version}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _job(self, job: BuildJob) -> None:
        try:
            await asyncio.to_thread(self._run, job, self.stopping)
        except BuildStopped:
            logger.warning("compression stopped model=%s version=%s: the server is stopping", job.model, job.version)
        except Exception:  # the runner records its own failures; this is a last resort
            logger.exception("compression job crashed model=%s version=%s", job.model, job.version)

    def running(self) -> Sequence[asyncio.Task[None]]:
        return tuple(self._tasks)

    async def close(self, grace_s: float) -> None:
        """Stops the running jobs and waits up to `grace_s` for their threads to end."""
        self._stop.set()
        self._loop = None
        tasks = tuple(self._tasks)
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            logger.warning("compression job still running after %.0fs: %s", grace_s, task.get_name())
            task.cancel()
