"""Group commit of telemetry: many batches per transaction, each counted exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fleetcast.proto import telemetry as buckets
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.ingest import IngestConfig, TelemetryWriter
from fleetcast.server.store import StatsRow
from fleetcast.server.store.sqlite import SqliteStore
from fleetcast.server.telemetry import Batch


def _batch(batch_id: str, device_id: str, inferences: int, bucket: int) -> Batch:
    hist = buckets.empty()
    hist[bucket] = inferences
    return Batch(batch_id, device_id, (StatsRow("digits", "1", "original", inferences, 1, 2.0 * inferences, tuple(hist)),))


def test_concurrent_batches_share_transactions_and_resends_count_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "t.db")
    writer = TelemetryWriter(store=store, config=IngestConfig(max_batches=64))
    sent = [(f"dev-{i % 20}", _batch(f"b-{i}", f"dev-{i % 20}", 1 + i % 7, i % buckets.BUCKETS)) for i in range(400)]

    async def scenario() -> list[bool]:
        first = await asyncio.gather(*(writer.submit(d, b) for d, b in sent))
        resent = await asyncio.gather(*(writer.submit(d, b) for d, b in sent[::3]))   # acks lost: sent again
        return first + resent

    try:
        flags = asyncio.run(scenario())
        assert flags[:400] == [False] * 400 and all(flags[400:])
        assert writer.flushes < 50                        # grouped, not one transaction per batch
        aggregates = store.aggregates()
        assert sum(a.inferences for a in aggregates) == sum(b.stats[0].inferences for _, b in sent)
        assert sum(a.errors for a in aggregates) == 400
        assert sum(sum(a.histogram) for a in aggregates) == sum(b.stats[0].inferences for _, b in sent)
        dev3 = [a for a in aggregates if a.device_id == "dev-3"]
        assert dev3[0].latency_sum_ms == sum(2.0 * b.stats[0].inferences for d, b in sent if d == "dev-3")
    finally:
        store.close()


def test_a_bad_batch_is_refused_before_it_joins_a_transaction(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "t.db")
    writer = TelemetryWriter(store=store)

    async def scenario() -> None:
        good = writer.submit("dev-1", _batch("b-1", "dev-1", 3, 1))
        with pytest.raises(InvalidRequest, match="sent by"):
            await writer.submit("dev-1", _batch("b-2", "dev-2", 3, 1))
        assert await good is False

    try:
        asyncio.run(scenario())
        assert [a.inferences for a in store.aggregates()] == [3]
    finally:
        store.close()
