"""Ingest exactness: random flushes with resends, then every reader counted against sums
made here, row by row (the four telemetry tables on both stores)."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from fleetcast.proto import telemetry as buckets
from fleetcast.server.store import (
    UNKNOWN_HARDWARE,
    WINDOW_S,
    Device,
    StatsRow,
    TelemetryBatch,
)

T0 = 1_700_000_040.0   # the start of a minute


def _random_batches(rng: random.Random, n: int, devices: list[str]) -> list[TelemetryBatch]:
    batches = []
    for i in range(n):
        rows = []
        for _ in range(rng.randint(0, 4)):
            hist = buckets.empty()
            for _ in range(rng.randint(1, 4)):
                hist[rng.randrange(buckets.BUCKETS)] += rng.randint(1, 50)
            inferences = sum(hist)
            rows.append(StatsRow(f"m{rng.randint(0, 1)}", str(rng.randint(1, 2)), rng.choice(("original", "int8")),
                                 inferences, rng.randint(0, inferences), 0.5 * rng.randint(0, 4 * inferences),
                                 tuple(hist), backend=rng.choice(("", "onnxruntime", "tflite"))))
        batches.append(TelemetryBatch(rng.choice(devices), f"b-{i}", tuple(rows)))
    return batches


class Expected:
    """What each reader must return, summed here from the batches counted."""

    def __init__(self, hardware: dict[str, str]) -> None:
        self.hardware = hardware
        self.tables: dict[str, dict[tuple[Any, ...], list[Any]]] = defaultdict(dict)

    def add(self, batch: TelemetryBatch, at: float) -> None:
        minute = int(at // WINDOW_S)
        hw = self.hardware.get(batch.device_id)
        for r in batch.rows:
            for table, key in (
                    ("aggregates", (batch.device_id, r.model, r.version, r.variant)),
                    ("windows", (batch.device_id, r.model, r.version, r.variant, r.backend, minute)),
                    ("series", (r.model, r.version, r.variant, hw or "", r.backend, minute)),
                    ("fleet", (r.model, r.version, r.variant, hw or UNKNOWN_HARDWARE, r.backend))):
                acc = self.tables[table].setdefault(key, [0, 0, 0.0, buckets.empty()])
                acc[0] += r.inferences
                acc[1] += r.errors
                acc[2] += r.latency_sum_ms
                buckets.merge(acc[3], r.histogram)


def _got(store: Any, models: list[str]) -> dict[str, dict[tuple[Any, ...], list[Any]]]:
    def sums(x: Any) -> list[Any]:
        return [x.inferences, x.errors, x.latency_sum_ms, list(x.histogram)]
    since, until = T0 - 3600, T0 + 3600
    return {
        "aggregates": {(a.device_id, a.model, a.version, a.variant): sums(a) for a in store.aggregates()},
        "windows": {(w.device_id, w.model, w.version, w.variant, w.backend, w.minute): sums(w)
                    for m in models for w in store.window_rows(m, since=since, until=until)},
        "series": {(s.model, s.version, s.variant, s.hardware_class, s.backend, s.minute): sums(s)
                   for m in models for s in store.series_rows(m, since=since, until=until)},
        "fleet": {(f.model, f.version, f.variant, f.hardware_class, f.backend): sums(f)
                  for f in store.fleet_aggregates()},
    }


def test_random_flushes_with_resends_are_counted_exactly_once_in_every_table(store) -> None:
    rng = random.Random(7)
    hardware = {f"dev-{i}": ("jetson", "x86-cpu", "rk3399")[i % 3] for i in range(12)}
    for device_id, hw in hardware.items():
        store.put_device(Device(device_id, f"t-{device_id}", hw, (), "", {}, "1", 1.0))
    devices = [*hardware, "gone-1", "gone-2"]        # two send telemetry without being enrolled
    batches = _random_batches(rng, 600, devices)
    expected = Expected(hardware)
    counted: set[tuple[str, str]] = set()
    sent = 0
    at = T0
    while sent < len(batches):
        size = rng.randint(1, 80)
        flush = batches[sent:sent + size]
        sent += size
        # resends of batches already stored, and of batches in this very flush
        flush += rng.sample(batches[:sent], k=min(sent, rng.randint(0, 10)))
        rng.shuffle(flush)
        flags = store.ingest_telemetry_many(flush, at)
        for batch, duplicate in zip(flush, flags):
            key = (batch.device_id, batch.batch_id)
            assert duplicate == (key in counted), key
            if not duplicate:
                counted.add(key)
                expected.add(batch, at)
        at += rng.choice((0.0, 7.0, 45.0))            # several flushes per minute, several minutes
    assert len(counted) == len(batches)
    got = _got(store, ["m0", "m1"])
    for table in ("aggregates", "windows", "series", "fleet"):
        assert got[table] == expected.tables[table], table
    assert {d.device_id: d.last_seen is not None for d in store.devices()} == \
        {d: any(b.device_id == d and b.rows for b in batches) for d in hardware}


def _one(inferences: int, bucket: int) -> tuple[StatsRow, ...]:
    hist = buckets.empty()
    hist[bucket] = inferences
    return (StatsRow("m0", "1", "original", inferences, 0, 1.0 * inferences, tuple(hist), backend="tflite"),)


def test_aggregates_count_every_minute_whatever_order_the_clock_gives_and_after_a_prune(store) -> None:
    minutes = [10, 12, 12, 10, 11, 30, 9, 30]            # the clock steps back twice
    for i, m in enumerate(minutes):
        store.ingest_telemetry_many([TelemetryBatch("dev-1", f"b-{i}", _one(i + 1, i))], T0 + m * WINDOW_S + 1)
    expected = [i + 1 if i < len(minutes) else 0 for i in range(buckets.BUCKETS)]

    def counted() -> tuple[int, list[int]]:
        [a] = store.aggregates(device_id="dev-1")
        assert [(x.device_id, x.inferences) for x in store.aggregates()] == [("dev-1", a.inferences)]
        return a.inferences, list(a.histogram)

    assert counted() == (sum(expected), expected)
    windows = store.window_rows("m0", since=T0, until=T0 + 3600)
    assert {w.minute: w.inferences for w in windows} == {
        int(T0 // WINDOW_S) + m: sum(i + 1 for i, x in enumerate(minutes) if x == m) for m in set(minutes)}
    # every window dropped: the aggregates keep them all
    assert store.prune_windows(devices_before=T0 + 7200, series_before=0.0) == len(set(minutes))
    assert store.window_rows("m0", since=T0, until=T0 + 3600) == []
    assert counted() == (sum(expected), expected)
    store.ingest_telemetry_many([TelemetryBatch("dev-1", "b-late", _one(100, 0))], T0 + 20 * WINDOW_S)
    expected[0] += 100
    assert counted() == (sum(expected), expected)
