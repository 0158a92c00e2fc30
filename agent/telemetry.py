"""Telemetry: per-model counters, windows closed into batches, an on-disk spool, a sender.

Counting is cheap: each loaded model has its own `Counters`, and an inference adds
one sample to it with a single lock-free `deque.append`. Every telemetry interval the
window is closed into a `TelemetryBatch` with a fresh batch id and stored in the
SQLite spool (`telemetry.db`). The sender sends spooled batches oldest first and
deletes one only when the server's acknowledgement arrives (gRPC `TelemetryAck`, or
an `UplinkAck` on the device's MQTT ack topic: a broker's PUBACK is not enough), so
nothing is lost to a broker crash and a batch sent twice is counted once by the
server (it deduplicates by batch id). The sender thread never dies: every failure
of a step is logged and retried with backoff.
While the server is unreachable batches keep spooling, up to `max_batches`; past
that the oldest are dropped and the count logged.

The spool also holds the status outbox: every StatusReport the update flow makes is
queued here and sent in order, so reports made while offline reach the server later.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from fleetcast.agent.errors import TransientError
from fleetcast.proto import telemetry as buckets
from fleetcast.proto.v1 import device_pb2

logger = logging.getLogger(__name__)

_MAX_RECORD_BYTES: Final = 1024 * 1024


@dataclass(frozen=True)
class ModelKey:
    model: str
    version: str
    variant: str
    backend: str
    caller: str = ""      # "" local API and in-process; "bridge" the H5 bridge (never a page URL)


class Counters:
    """One model's counts: the open window, and totals since it was loaded.

    The hot path is one `deque.append` (atomic under the GIL, no lock): the latency
    in milliseconds, negated for a failed call. Samples are folded into the window's
    histogram off the hot path, when a window closes or totals are read. If nobody
    folds for `max_pending` calls the oldest samples are dropped.
    """

    def __init__(self, key: ModelKey, *, max_pending: int = 1_000_000) -> None:
        self.key = key
        self._pending: deque[float] = deque(maxlen=max_pending)
        self.record_latency = self._pending.append      # bound once: the cheapest call there is
        self._lock = threading.Lock()
        self.inferences = self.errors = self.total_inferences = self.total_errors = 0
        self.histogram = buckets.empty()
        self.latency_sum_ms = 0.0

    def record(self, latency_ms: float, ok: bool) -> None:
        self._pending.append(latency_ms if ok else -latency_ms)

    def _fold(self) -> None:
        pending, popleft = self._pending, self._pending.popleft
        bucket_of = buckets.bucket_of
        while pending:
            sample = popleft()
            latency = -sample if sample < 0 else sample
            self.inferences += 1
            self.total_inferences += 1
            self.histogram[bucket_of(latency)] += 1
            self.latency_sum_ms += latency
            if sample < 0:
                self.errors += 1
                self.total_errors += 1

    def totals(self) -> tuple[int, int]:
        """(inferences, errors) since this model was first loaded in this process."""
        with self._lock:
            self._fold()
            return self.total_inferences, self.total_errors

    def drain(self) -> device_pb2.ModelStats | None:
        """The window's stats, resetting the window; None when nothing happened."""
        with self._lock:
            self._fold()
            if not self.inferences:
                return None
            stats = device_pb2.ModelStats(
                model=self.key.model, version=self.key.version, variant=self.key.variant,
                backend=self.key.backend, caller=self.key.caller, inferences=self.inferences, errors=self.errors,
                latency=device_pb2.LatencyHistogram(counts=self.histogram),
                latency_sum_ms=self.latency_sum_ms)
            self.inferences = self.errors = 0
            self.histogram = buckets.empty()
            self.latency_sum_ms = 0.0
        return stats


class Recorder:
    """All counters of this process, by model key; closes windows into batches."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self._lock = threading.Lock()
        self._counters: dict[ModelKey, Counters] = {}
        self._window_start_ms = int(time.time() * 1000)

    def counters_for(self, key: ModelKey) -> Counters:
        with self._lock:
            return self._counters.setdefault(key, Counters(key))

    def close_window(self) -> device_pb2.TelemetryBatch | None:
        """The window since the last close as a batch, None when nothing was counted."""
        now_ms = int(time.time() * 1000)
        with self._lock:
            counters = list(self._counters.values())
            start_ms, self._window_start_ms = self._window_start_ms, now_ms
        stats = [s for s in (c.drain() for c in counters) if s is not None]
        if not stats:
            return None
        return device_pb2.TelemetryBatch(batch_id=uuid.uuid4().hex, device_id=self.device_id,
                                         window_start_ms=start_ms, window_end_ms=now_ms, stats=stats)


class Spool:
    """`telemetry.db`: batches waiting for an ack, and the status outbox."""

    def __init__(self, path: Path, *, max_batches: int = 10_000, max_statuses: int = 10_000) -> None:
        self.max_batches = max_batches
        self.max_statuses = max_statuses
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        path.chmod(0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS batches (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "batch_id TEXT UNIQUE NOT NULL, data BLOB NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS status (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "data BLOB NOT NULL)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_batch(self, batch: device_pb2.TelemetryBatch) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO batches (batch_id, data) VALUES (?, ?)",
                             (batch.batch_id, batch.SerializeToString()))
            dropped = self._trim("batches", self.max_batches)
        if dropped:
            logger.warning("telemetry spool full: dropped_batches=%d oldest", dropped)

    def pending_batches(self, limit: int = 100) -> list[device_pb2.TelemetryBatch]:
        with self._lock:
            rows = self._db.execute("SELECT data FROM batches ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [b for b in (self._parse(device_pb2.TelemetryBatch, r[0]) for r in rows) if b is not None]

    def ack(self, batch_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,)).rowcount > 0

    def add_status(self, report: device_pb2.StatusReport) -> None:
        with self._lock:
            self._db.execute("INSERT INTO status (data) VALUES (?)", (report.SerializeToString(),))
            dropped = self._trim("status", self.max_statuses)
        if dropped:
            logger.warning("status outbox full: dropped_reports=%d oldest", dropped)

    def pending_statuses(self, limit: int = 100) -> list[tuple[int, device_pb2.StatusReport]]:
        with self._lock:
            rows = self._db.execute("SELECT seq, data FROM status ORDER BY seq LIMIT ?", (limit,)).fetchall()
        out = []
        for seq, data in rows:
            report = self._parse(device_pb2.StatusReport, data)
            if report is None:
                self.remove_status(seq)
            else:
                out.append((seq, report))
        return out

    def remove_status(self, seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM status WHERE seq = ?", (seq,))

    def counts(self) -> tuple[int, int]:
        """(spooled batches, queued status reports)."""
        with self._lock:
            b = self._db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
            s = self._db.execute("SELECT COUNT(*) FROM status").fetchone()[0]
        return b, s

    def _trim(self, table: str, keep: int) -> int:
        (count,) = self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        if count <= keep:
            return 0
        self._db.execute(f"DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} ORDER BY seq LIMIT ?)",
                         (count - keep,))
        return count - keep

    @staticmethod
    def _parse(kind: type, data: bytes):  # noqa: ANN205 (a protobuf message of `kind`)
        if len(data) > _MAX_RECORD_BYTES:
            return None
        message = kind()
        try:
            message.ParseFromString(data)
        except Exception:  # protobuf's DecodeError; the row is unusable either way
            logger.error("spool row of %s unreadable: dropped", kind.__name__)
            return None
        return message


MAX_REPORTS_PER_CALL: Final = 64   # the server's bound on one ReportStatuses call


class Uplink(Protocol):
    """Where reports and batches go: gRPC (default) or MQTT. Raises TransientError."""

    def send_status(self, report: device_pb2.StatusReport) -> None: ...

    def send_statuses(self, reports: Sequence[device_pb2.StatusReport]) -> int:
        """Sends the reports in order; returns how many of the first were acknowledged
        (raises TransientError when none was)."""
        ...

    def send_batches(self, batches: Sequence[device_pb2.TelemetryBatch]) -> Iterator[str]:
        """Yields the batch id of each acknowledged batch."""
        ...


class Sender:
    """Closes windows into the spool and empties the spool through an uplink."""

    def __init__(self, *, spool: Spool, recorder: Recorder, uplink: Uplink, interval_s: float,
                 stop: threading.Event) -> None:
        self.spool = spool
        self.recorder = recorder
        self.uplink = uplink
        self.interval_s = interval_s
        self.stop = stop
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def report(self, report: device_pb2.StatusReport, *, now: bool = False) -> None:
        """Queues a status report and wakes the sender; `now` also sends from this thread."""
        self.spool.add_status(report)
        if now:
            self.flush()
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="telemetry-sender", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def close_window(self) -> None:
        batch = self.recorder.close_window()
        if batch is not None:
            self.spool.add_batch(batch)

    def flush(self) -> bool:
        """Sends queued statuses in order, then spooled batches; False when the uplink failed."""
        with self._flush_lock:   # one sender at a time keeps the order and sends each once
            return self._flush()

    def _flush(self) -> bool:
        try:
            while statuses := self.spool.pending_statuses(limit=MAX_REPORTS_PER_CALL):
                # What the spool holds goes in one call where the uplink can (steps that came
                # faster than they were sent); only what was acknowledged leaves the spool.
                sent = self.uplink.send_statuses([report for _, report in statuses])
                for seq, _ in statuses[:sent]:
                    self.spool.remove_status(seq)
            while batches := self.spool.pending_batches():
                acked = sum(self.spool.ack(batch_id) for batch_id in self.uplink.send_batches(batches))
                if not acked:
                    return False
            return True
        except TransientError as e:
            logger.info("uplink unavailable, keeping the spool: %s", e)
            return False
        except Exception:  # noqa: BLE001 (an uplink bug must not stop telemetry for good)
            logger.exception("uplink failed unexpectedly, keeping the spool")
            return False

    def _run(self) -> None:
        next_window = time.monotonic() + self.interval_s
        backoff_s = 1.0
        while not self.stop.is_set():
            self._wake.wait(timeout=max(0.0, next_window - time.monotonic()))
            self._wake.clear()
            try:
                if time.monotonic() >= next_window or self.stop.is_set():
                    self.close_window()
                    next_window = time.monotonic() + self.interval_s
                sent = self.flush()
            except Exception:  # noqa: BLE001 (the sender never dies: a full disk may clear)
                logger.exception("telemetry sender step failed; retrying in %.0fs", backoff_s)
                sent = False
            if sent:
                backoff_s = 1.0
            else:
                self.stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, self.interval_s)
                self._wake.set()
        self.close_window()   # the last window is kept on disk for the next start


def send_one_by_one(send: Callable[[device_pb2.StatusReport], None],
                    reports: Sequence[device_pb2.StatusReport]) -> int:
    """`Uplink.send_statuses` over an uplink's `send_status`: stops at the first failure."""
    for i, report in enumerate(reports):
        try:
            send(report)
        except TransientError:
            if i == 0:
                raise
            return i
    return len(reports)
