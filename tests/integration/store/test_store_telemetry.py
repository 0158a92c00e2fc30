"""Telemetry through the store: each batch counted once, in one transaction, sums clamped."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from fleetcast.proto import telemetry as buckets
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.ingest import IngestConfig, TelemetryWriter
from fleetcast.server.store import MAX_AGGREGATE_COUNT, MAX_AGGREGATE_LATENCY_MS, Device, StatsRow, TelemetryBatch
from fleetcast.server.telemetry import Batch
from tests.integration.store.conftest import OpenStore


def _row(inferences: int, bucket: int, *, version: str = "1", errors: int = 1) -> StatsRow:
    hist = buckets.empty()
    hist[bucket] = inferences
    return StatsRow("digits", version, "original", inferences, errors, 2.0 * inferences, tuple(hist))


def _batch(batch_id: str, device_id: str, inferences: int, bucket: int) -> Batch:
    return Batch(batch_id, device_id, (_row(inferences, bucket),))


def test_telemetry_batch_is_counted_once(store) -> None:
    row = _row(5, 3)
    assert store.ingest_telemetry("dev-1", "b1", [row], 1.0) is False
    assert store.ingest_telemetry("dev-1", "b1", [row], 2.0) is True
    assert store.ingest_telemetry("dev-2", "b1", [row], 2.0) is False
    [agg] = store.aggregates(device_id="dev-1")
    assert (agg.inferences, agg.errors, agg.histogram[3]) == (5, 1, 5)


def test_a_batch_twice_in_one_flush_counts_once_and_touches_its_device(store) -> None:
    store.put_device(Device("dev-1", "t1", "x86-cpu", (), "", {}, "1", 1.0))
    flags = store.ingest_telemetry_many([
        TelemetryBatch("dev-1", "b1", [_row(2, 0), _row(3, 1, version="2")]),
        TelemetryBatch("dev-1", "b1", [_row(2, 0)]),
        TelemetryBatch("dev-1", "b2", [_row(4, 0)]),
    ], 50.0)
    assert flags == [False, True, False]
    got = {a.version: (a.inferences, a.histogram[0], a.histogram[1]) for a in store.aggregates(device_id="dev-1")}
    assert got == {"1": (6, 6, 0), "2": (3, 0, 3)}
    assert store.device("dev-1").last_seen == 50.0


def test_aggregates_saturate_at_their_limits(store) -> None:
    big = MAX_AGGREGATE_COUNT - 10
    hist = buckets.empty()
    hist[0] = big
    store.ingest_telemetry("dev-1", "b1", [StatsRow("m", "1", "v", big, big, MAX_AGGREGATE_LATENCY_MS - 1, tuple(hist))], 1.0)
    store.ingest_telemetry("dev-1", "b2", [StatsRow("m", "1", "v", 100, 100, 1e6, tuple(hist))], 2.0)
    [agg] = store.aggregates()
    assert (agg.inferences, agg.errors, agg.histogram[0]) == (MAX_AGGREGATE_COUNT,) * 3
    assert agg.latency_sum_ms == MAX_AGGREGATE_LATENCY_MS


def test_two_stores_ingesting_the_same_batches_count_each_once(open_store: OpenStore) -> None:
    stores = [open_store(), open_store()]
    batches = [TelemetryBatch(f"dev-{i % 5}", f"b-{i}", [_row(1 + i % 3, i % buckets.BUCKETS)]) for i in range(200)]
    start = threading.Barrier(8)

    def flush(k: int) -> list[bool]:
        start.wait()
        # Each of 8 writers sends every batch, in its own order, in flushes of 25.
        mine = batches[k * 25:] + batches[:k * 25]
        return [flag for i in range(0, 200, 25) for flag in stores[k % 2].ingest_telemetry_many(mine[i:i + 25], 1.0)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        flags = [f for got in pool.map(flush, range(8)) for f in got]
    assert flags.count(False) == 200                                  # each batch new exactly once
    aggregates = stores[0].aggregates()
    assert sum(a.inferences for a in aggregates) == sum(b.rows[0].inferences for b in batches)
    assert sum(sum(a.histogram) for a in aggregates) == sum(b.rows[0].inferences for b in batches)
    assert sum(a.errors for a in aggregates) == 200
    windows = stores[1].window_rows("digits", since=0.0, until=60.0)
    series = stores[1].series_rows("digits", since=0.0, until=60.0)
    assert sum(w.inferences for w in windows) == sum(s.inferences for s in series) == \
        sum(b.rows[0].inferences for b in batches)


def test_concurrent_batches_share_transactions_and_resends_count_once(store) -> None:
    writer = TelemetryWriter(store=store, config=IngestConfig(max_batches=64))
    sent = [(f"dev-{i % 20}", _batch(f"b-{i}", f"dev-{i % 20}", 1 + i % 7, i % buckets.BUCKETS)) for i in range(400)]

    async def scenario() -> list[bool]:
        first = await asyncio.gather(*(writer.submit(d, b) for d, b in sent))
        resent = await asyncio.gather(*(writer.submit(d, b) for d, b in sent[::3]))   # acks lost: sent again
        return first + resent

    flags = asyncio.run(scenario())
    assert flags[:400] == [False] * 400 and all(flags[400:])
    assert writer.flushes < 50                        # grouped, not one transaction per batch
    aggregates = store.aggregates()
    assert sum(a.inferences for a in aggregates) == sum(b.stats[0].inferences for _, b in sent)
    assert sum(a.errors for a in aggregates) == 400
    assert sum(sum(a.histogram) for a in aggregates) == sum(b.stats[0].inferences for _, b in sent)
    dev3 = [a for a in aggregates if a.device_id == "dev-3"]
    assert dev3[0].latency_sum_ms == sum(2.0 * b.stats[0].inferences for d, b in sent if d == "dev-3")


def test_a_bad_batch_is_refused_before_it_joins_a_transaction(store) -> None:
    writer = TelemetryWriter(store=store)

    async def scenario() -> None:
        good = writer.submit("dev-1", _batch("b-1", "dev-1", 3, 1))
        with pytest.raises(InvalidRequest, match="sent by"):
            await writer.submit("dev-1", _batch("b-2", "dev-2", 3, 1))
        assert await good is False

    asyncio.run(scenario())
    assert [a.inferences for a in store.aggregates()] == [3]
