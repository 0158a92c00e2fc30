"""Telemetry windows through the store: each stored batch lands in its minute, per device
and per cohort, once, in the ingest's transaction; retention drops only old windows."""

from __future__ import annotations

import asyncio

import pytest

from fleetcast.server.ingest import IngestConfig, TelemetryWriter
from fleetcast.server.store import WINDOW_S, Device, Store
from fleetcast.server.store import TelemetryBatch
from fleetcast.server.telemetry import Batch
from tests.integration.store.conftest import OpenStore
from tests.unit.server.test_server_telemetry_windows import T0, _row


@pytest.fixture
def store(open_store: OpenStore) -> Store:
    s = open_store()
    for i, hw in enumerate(["arm-cpu", "arm-cpu", "x86-cpu"]):
        s.put_device(Device(f"dev-{i}", f"t{i}", hw, ("onnxruntime",), "", {}, "0.1", 1.0))
    return s


def test_batches_land_in_the_minute_they_were_stored_per_device_and_per_cohort(store: Store) -> None:
    store.ingest_telemetry_many([TelemetryBatch("dev-0", "b1", [_row("1", [2.0, 3.0])]),
                                 TelemetryBatch("dev-1", "b1", [_row("1", [4.0], errors=1)])], T0 + 5)
    store.ingest_telemetry_many([TelemetryBatch("dev-0", "b2", [_row("1", [5.0])])], T0 + 50)   # same minute
    store.ingest_telemetry_many([TelemetryBatch("dev-2", "b1", [_row("1", [6.0])])], T0 + 65)   # next minute
    # a resent batch is a duplicate: it adds to no window
    assert store.ingest_telemetry_many([TelemetryBatch("dev-0", "b2", [_row("1", [5.0])])], T0 + 70) == [True]

    rows = store.window_rows("m", since=T0, until=T0 + 119)
    by_device = {(r.device_id, r.minute): r.inferences for r in rows}
    minute = int(T0 // WINDOW_S)
    assert by_device == {("dev-0", minute): 3, ("dev-1", minute): 1, ("dev-2", minute + 1): 1}
    assert [r.inferences for r in store.window_rows("m", since=T0 + 60, until=T0 + 119)] == [1]
    assert {r.device_id for r in store.window_rows("m", since=T0, until=T0 + 119, device_ids=["dev-1"])} == {"dev-1"}

    series = {(s.hardware_class, s.minute): (s.inferences, s.errors) for s in store.series_rows("m", since=T0,
                                                                                                  until=T0 + 119)}
    assert series == {("arm-cpu", minute): (4, 1), ("x86-cpu", minute + 1): (1, 0)}


def test_prune_drops_only_windows_past_their_retention(store: Store) -> None:
    store.ingest_telemetry_many([TelemetryBatch("dev-0", "old", [_row("1", [1.0])])], T0)
    store.ingest_telemetry_many([TelemetryBatch("dev-0", "new", [_row("1", [1.0])])], T0 + 600)
    dropped = store.prune_windows(devices_before=T0 + 300, series_before=T0 - 1)
    assert dropped == 1
    assert [r.minute * WINDOW_S for r in store.window_rows("m", since=T0, until=T0 + 900)] == [T0 + 600]
    assert len(store.series_rows("m", since=T0, until=T0 + 900)) == 2
    [aggregate] = store.aggregates(device_id="dev-0")       # cumulative figures are never pruned
    assert aggregate.inferences == 2


def test_the_writer_prunes_windows_past_retention_as_it_flushes(store: Store) -> None:
    now = [T0]
    writer = TelemetryWriter(store=store, config=IngestConfig(prune_every_s=60), clock=lambda: now[0])

    async def scenario() -> None:
        await writer.submit("dev-0", Batch("b1", "dev-0", (_row("1", [1.0]),)))
        now[0] = T0 + 7 * 3600      # past the per-device retention, within the series'
        await writer.submit("dev-0", Batch("b2", "dev-0", (_row("1", [1.0]),)))
        await writer.drain()

    asyncio.run(scenario())
    assert [r.minute * WINDOW_S for r in store.window_rows("m", since=0, until=now[0])] == [T0 + 7 * 3600]
    assert len(store.series_rows("m", since=0, until=now[0])) == 2
