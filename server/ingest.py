"""Group commit for telemetry: batches from many devices stored in one transaction.

A gRPC handler awaits `TelemetryWriter.submit`, which checks the batch and queues it.
While one flush is being written (in a worker thread) the next batches queue up; the
following flush takes all of them, up to `max_batches`, in one store transaction. Each
submit returns only after the transaction holding its batch committed, so an
acknowledgement is never sent for a batch that is not stored, and a batch resent
after a lost acknowledgement is reported as a duplicate and counted once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleetcast.server.store import DEVICE_WINDOW_RETENTION_S, SERIES_RETENTION_S, Store, TelemetryBatch
from fleetcast.server.telemetry import Batch, check_batch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    max_batches: int = 1024        # batches per transaction
    max_rows: int = 50_000         # stats rows per transaction
    prune_every_s: float = 600.0   # how often windows past their retention are dropped


class TelemetryWriter:
    def __init__(self, *, store: Store, config: IngestConfig = IngestConfig(),
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self._queue: list[tuple[TelemetryBatch, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.flushes = 0
        self._pruned_at = 0.0

    async def submit(self, device_id: str, batch: Batch) -> bool:
        """Stores the batch with others; True when it was a duplicate. Raises InvalidRequest."""
        check_batch(batch, device_id)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((TelemetryBatch(device_id, batch.batch_id, batch.stats), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all())
        return await future

    async def _flush_all(self) -> None:
        while self._queue:
            taken, rows = 0, 0
            while taken < len(self._queue) and taken < self.config.max_batches and rows < self.config.max_rows:
                rows += len(self._queue[taken][0].rows)
                taken += 1
            group, self._queue = self._queue[:taken], self._queue[taken:]
            try:
                duplicates = await asyncio.to_thread(self.store.ingest_telemetry_many, [b for b, _ in group],
                                                     self.clock())
            except Exception as e:   # nothing of this group was committed: every sender retries
                logger.exception("telemetry flush failed batches=%d", len(group))
                for _, future in group:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.flushes += 1
            for (_, future), duplicate in zip(group, duplicates):
                if not future.done():
                    future.set_result(duplicate)
            await self._prune_if_due()

    async def _prune_if_due(self) -> None:
        now = self.clock()
        if now - self._pruned_at < self.config.prune_every_s:
            return
        self._pruned_at = now
        try:
            dropped = await asyncio.to_thread(self.store.prune_windows, devices_before=now - DEVICE_WINDOW_RETENTION_S,
                                              series_before=now - SERIES_RETENTION_S)
        except Exception:   # retention is housekeeping: the next flush tries again
            logger.exception("telemetry window prune failed")
            self._pruned_at = 0.0
            return
        logger.debug("telemetry windows pruned rows=%d", dropped)

    async def drain(self) -> None:
        """Returns once every queued batch is stored and housekeeping is done (shutdown, tests)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
