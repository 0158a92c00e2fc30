"""Telemetry ingest: each (device, batch id) counted once, aggregates per model variant.

The dedupe row and the aggregate update commit in one transaction (the store's
`ingest_telemetry`), so a batch resent after a lost acknowledgement is acknowledged
as a duplicate and never counted twice.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fleetcast.proto import telemetry as buckets
from fleetcast.server import fleetview
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.store import StatsRow, Store

logger = logging.getLogger(__name__)

MAX_STATS: Final = 256
MAX_BATCH_ID_CHARS: Final = 128
MAX_NAME_CHARS: Final = 128
MAX_COUNT: Final = 2**53  # keeps sums exact in SQLite and JSON
# One batch covers seconds of serving: its counts are far below these, so a value above
# them is refused as a broken or hostile sender rather than stored.
MAX_BATCH_COUNT: Final = 2**32
MAX_LATENCY_MS: Final = 3_600_000.0   # one inference slower than an hour is not a measurement


@dataclass(frozen=True)
class Batch:
    batch_id: str
    device_id: str
    stats: Sequence[StatsRow]

    @classmethod
    def from_message(cls, m: Any) -> "Batch":
        return cls(
            batch_id=m.batch_id, device_id=m.device_id,
            stats=tuple(
                StatsRow(model=s.model, version=s.version, variant=s.variant, inferences=s.inferences,
                         errors=s.errors, latency_sum_ms=s.latency_sum_ms, histogram=tuple(s.latency.counts),
                         backend=s.backend)
                for s in m.stats
            ),
        )


def check_batch(batch: Batch, device_id: str) -> Batch:
    if batch.device_id and batch.device_id != device_id:
        raise InvalidRequest(f"telemetry batch names device {batch.device_id[:80]!r} but was sent by {device_id!r}")
    if not batch.batch_id or len(batch.batch_id) > MAX_BATCH_ID_CHARS:
        raise InvalidRequest(f"telemetry batch_id must be 1-{MAX_BATCH_ID_CHARS} characters")
    if len(batch.stats) > MAX_STATS:
        raise InvalidRequest(f"telemetry batch has {len(batch.stats)} stats entries, at most {MAX_STATS}")
    for s in batch.stats:   # the ingest hot path: plain comparisons, no generators
        if not s.model or max(len(s.model), len(s.version), len(s.variant), len(s.backend)) > MAX_NAME_CHARS:
            raise InvalidRequest(f"telemetry stats need a model name and names up to {MAX_NAME_CHARS} characters")
        if len(s.histogram) != buckets.BUCKETS:
            raise InvalidRequest(
                f"latency histogram for {s.model[:40]} has {len(s.histogram)} buckets, expected {buckets.BUCKETS} "
                "(see fleetcast.proto.telemetry)"
            )
        if not 0 <= s.errors <= s.inferences:
            raise InvalidRequest(f"telemetry counts for {s.model[:40]} are not sane: need 0 <= errors <= inferences")
        if s.inferences > MAX_BATCH_COUNT or sum(s.histogram) > MAX_BATCH_COUNT:
            raise InvalidRequest(f"telemetry batch {batch.batch_id[:40]} refused: {s.model[:40]} counts "
                                 f"{max(s.inferences, sum(s.histogram))} inferences, at most {MAX_BATCH_COUNT} "
                                 "fit one batch; send smaller batches")
        if not (0.0 <= s.latency_sum_ms <= s.inferences * MAX_LATENCY_MS and math.isfinite(s.latency_sum_ms)):
            raise InvalidRequest(f"telemetry batch {batch.batch_id[:40]} refused: latency_sum_ms "
                                 f"{s.latency_sum_ms!r} for {s.model[:40]} must be finite, non-negative and at most "
                                 f"{MAX_LATENCY_MS:g} ms per inference")
    return batch


class Telemetry:
    def __init__(self, *, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def ingest(self, device_id: str, batch: Batch) -> bool:
        """Stores a batch; returns True when it was a duplicate (acknowledged, not counted)."""
        check_batch(batch, device_id)
        duplicate = self.store.ingest_telemetry(device_id, batch.batch_id, batch.stats, self.clock())
        logger.debug("telemetry batch device_id=%s batch=%s duplicate=%s", device_id, batch.batch_id, duplicate)
        return duplicate

    def summary(self, device_id: str | None = None) -> list[dict[str, Any]]:
        """Per model@version (and variant): counts and p50/p95/p99 from the summed histograms."""
        return fleetview.telemetry_rows(self.store.aggregates(device_id=device_id))
