"""Telemetry ingest throughput: the server's group commit against a plain insert_all.

    .venv/bin/python benchmarks/swarm.py telemetry --rows 200000 --senders 500 --repeat 3

`senders` concurrent devices each send batches of `rows_per_batch` stats rows through
`TelemetryWriter.submit` (what the gRPC handler awaits) into a fresh SQLite store; in
the same run the same rows go into a fresh table by sqlite-utils `insert_all`. A tenth
of the batches are then sent again (acknowledgements lost) and the aggregates are
counted: every inference exactly once, every resend reported as a duplicate.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path

import sqlite_utils

from fleetcast.proto import telemetry as buckets
from fleetcast.server.ingest import TelemetryWriter
from fleetcast.server.store import StatsRow
from fleetcast.server.store.sqlite import SqliteStore
from fleetcast.server.telemetry import Batch


def _batches(rows: int, senders: int, rows_per_batch: int) -> list[list[Batch]]:
    rng = random.Random(1)
    per_sender: list[list[Batch]] = [[] for _ in range(senders)]
    for i in range(rows // rows_per_batch):
        s = i % senders
        stats = []
        for m in range(rows_per_batch):
            hist = buckets.empty()
            n = rng.randint(2, 100)
            hist[rng.randrange(buckets.BUCKETS)] = n
            stats.append(StatsRow(f"model-{m}", "1", "original", n, rng.randint(0, 2), 3.0 * n, tuple(hist)))
        per_sender[s].append(Batch(f"b-{i}", f"dev-{s:05d}", tuple(stats)))
    return per_sender


def compare(*, rows: int, senders: int, rows_per_batch: int) -> str:
    work = _batches(rows, senders, rows_per_batch)
    flat = [(b.device_id, r) for batches in work for b in batches for r in b.stats]
    with tempfile.TemporaryDirectory(prefix="fleetcast-ingest-") as tmp:
        root = Path(tmp)
        plain = sqlite_utils.Database(root / "plain.db")
        plain.execute("PRAGMA journal_mode=WAL")
        plain.execute("PRAGMA synchronous=NORMAL")
        start = time.perf_counter()
        plain["stats"].insert_all(
            ({"device_id": d, "model": r.model, "version": r.version, "variant": r.variant, "inferences": r.inferences,
              "errors": r.errors, "latency_sum_ms": r.latency_sum_ms, "histogram": list(r.histogram)} for d, r in flat),
            batch_size=1000)
        plain_s = time.perf_counter() - start
        plain.close()

        store = SqliteStore(root / "fleetcast.db")
        writer = TelemetryWriter(store=store)

        async def send_all() -> float:
            async def sender(batches: list[Batch]) -> None:
                for b in batches:
                    assert await writer.submit(b.device_id, b) is False
            t0 = time.perf_counter()
            await asyncio.gather(*(sender(b) for b in work))
            took = time.perf_counter() - t0
            resent = [b for batches in work for b in batches[::10]]
            flags = await asyncio.gather(*(writer.submit(b.device_id, b) for b in resent))
            assert all(flags), "a resent batch was counted again"
            return took
        try:
            ours_s = asyncio.run(send_all())
            counted = sum(a.inferences for a in store.aggregates())
        finally:
            store.close()
    expected = sum(r.inferences for _, r in flat)
    assert counted == expected, f"aggregates count {counted} inferences, sent {expected}"
    return (f"RESULT telemetry rows={len(flat)} senders={senders} rows_per_batch={rows_per_batch} "
            f"ingest_rows_per_s={len(flat) / ours_s:.0f} insert_all_rows_per_s={len(flat) / plain_s:.0f} "
            f"ratio={plain_s / ours_s:.2f} flushes={writer.flushes} counted_exactly_once=True")
