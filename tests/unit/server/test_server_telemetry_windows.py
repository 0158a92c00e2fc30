"""Telemetry windows: each stored batch lands in its minute, per device and per cohort,
once; figures and series over them merge exactly like the cumulative aggregates."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetcast.proto import telemetry as buckets
from fleetcast.server import telemetry_windows
from fleetcast.server.fleetview import quantile
from fleetcast.server.ingest import IngestConfig, TelemetryWriter
from fleetcast.server.store import WINDOW_S, Device, StatsRow, TelemetryBatch
from fleetcast.server.store.sqlite import SqliteStore
from fleetcast.server.telemetry import Batch

T0 = 1_800_000_000.0 - 1_800_000_000.0 % WINDOW_S   # the start of a minute


def _row(version: str, latencies: list[float], *, errors: int = 0, variant: str = "original",
         backend: str = "onnxruntime") -> StatsRow:
    hist = buckets.empty()
    for ms in latencies:
        hist[buckets.bucket_of(ms)] += 1
    return StatsRow("m", version, variant, len(latencies), errors, float(sum(latencies)), tuple(hist), backend=backend)


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "f.db")
    for i, hw in enumerate(["arm-cpu", "arm-cpu", "x86-cpu"]):
        s.put_device(Device(f"dev-{i}", f"t{i}", hw, ("onnxruntime",), "", {}, "0.1", 1.0))
    yield s
    s.close()


def test_batches_land_in_the_minute_they_were_stored_per_device_and_per_cohort(store: SqliteStore) -> None:
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


def test_prune_drops_only_windows_past_their_retention(store: SqliteStore) -> None:
    store.ingest_telemetry_many([TelemetryBatch("dev-0", "old", [_row("1", [1.0])])], T0)
    store.ingest_telemetry_many([TelemetryBatch("dev-0", "new", [_row("1", [1.0])])], T0 + 600)
    dropped = store.prune_windows(devices_before=T0 + 300, series_before=T0 - 1)
    assert dropped == 1
    assert [r.minute * WINDOW_S for r in store.window_rows("m", since=T0, until=T0 + 900)] == [T0 + 600]
    assert len(store.series_rows("m", since=T0, until=T0 + 900)) == 2
    [aggregate] = store.aggregates(device_id="dev-0")       # cumulative figures are never pruned
    assert aggregate.inferences == 2


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batches=st.integers(1, 40))
def test_window_figures_equal_an_independent_merge_of_the_raw_latencies(tmp_path_factory, seed: int,
                                                                          batches: int) -> None:
    rng = random.Random(seed)
    store = SqliteStore(tmp_path_factory.mktemp("w") / "f.db")
    devices = {f"dev-{i}": rng.choice(["arm-cpu", "x86-cpu"]) for i in range(4)}
    for d, hw in devices.items():
        store.put_device(Device(d, d, hw, (), "", {}, "0.1", 1.0))
    raw: dict[tuple[str, str], list[float]] = {}
    for i in range(batches):
        device, version = rng.choice(sorted(devices)), rng.choice(["1", "2"])
        latencies = [rng.lognormvariate(1.0, 0.8) for _ in range(rng.randint(1, 30))]
        at = T0 + rng.uniform(0, 180)
        store.ingest_telemetry_many([TelemetryBatch(device, f"b{i}", [_row(version, latencies)])], at)
        raw.setdefault((version, devices[device]), []).extend(latencies)

    got = telemetry_windows.figures(store.window_rows("m", since=T0, until=T0 + 180),
                                    key=lambda r: (r.version, devices[r.device_id]))
    assert set(got) == set(raw)
    for key, latencies in raw.items():
        hist = np.bincount([buckets.bucket_of(ms) for ms in latencies], minlength=buckets.BUCKETS)
        assert got[key].inferences == len(latencies)
        assert got[key].histogram == tuple(int(x) for x in hist)
        assert got[key].quantile(0.95) == quantile(list(hist), 0.95)
    from_series = telemetry_windows.figures(store.series_rows("m", since=T0, until=T0 + 180),
                                            key=lambda s: (s.version, s.hardware_class))
    assert {k: f.histogram for k, f in from_series.items()} == {k: f.histogram for k, f in got.items()}
    store.close()


def test_series_steps_sum_minutes_and_count_devices(store: SqliteStore) -> None:
    for i, (device, offset) in enumerate([("dev-0", 0), ("dev-1", 30), ("dev-0", 70), ("dev-2", 200)]):
        store.ingest_telemetry_many([TelemetryBatch(device, f"b{i}", [_row("1", [float(i + 1)] * (i + 1))])],
                                    T0 + offset)
    rows = store.window_rows("m", since=T0, until=T0 + 299)
    points = telemetry_windows.series(rows, step_s=120, key=lambda r: r.version)["1"]
    assert [(p.at, p.figures.inferences, p.figures.devices) for p in points] == [(T0, 6, 2), (T0 + 120, 4, 1)]
    doc = telemetry_windows.series_document(points)
    assert doc["at"] == [T0, T0 + 120] and doc["inferences"] == [6, 4] and len(doc["p95_ms"]) == 2
    with pytest.raises(ValueError, match="multiple of 60"):
        telemetry_windows.series(rows, step_s=90, key=lambda r: r.version)


def test_the_writer_prunes_windows_past_retention_as_it_flushes(store: SqliteStore) -> None:
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
