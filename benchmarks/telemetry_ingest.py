"""Telemetry ingest throughput: the server's group commit against a plain insert_all.

    .venv/bin/python benchmarks/swarm.py telemetry --rows 200000 --senders 500 --repeat 3
    .venv/bin/python benchmarks/swarm.py telemetry --store postgresql://postgres@127.0.0.1:5432/postgres

With `--store` naming a PostgreSQL server (its database is only used to create and
drop one fresh database per run), the store is a `PostgresStore` and the plain
baseline is a COPY of the same rows into one table of that database.

`senders` concurrent devices each send batches of `rows_per_batch` stats rows through
`TelemetryWriter.submit` (what the gRPC handler awaits) into a fresh SQLite store; in
the same run the same rows go into a fresh table by sqlite-utils `insert_all`. A tenth
of the batches are then sent again (acknowledgements lost) and the aggregates are
counted: every inference exactly once, every resend reported as a duplicate. On SQLite
`cpu_ratio` is the same ratio in CPU seconds of this process (both threads), which other
programs on a loaded machine disturb less than the wall-clock one.

`profile_flush` times the store's flush alone (no writer, no event loop): the same
rows in `flushes` calls of `ingest_telemetry_many`, under cProfile in one thread.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import random
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import sqlite_utils

from fleetcast.proto import telemetry as buckets
from fleetcast.server.ingest import TelemetryWriter
from fleetcast.server.store import StatsRow, Store, TelemetryBatch
from fleetcast.server.store.open import open_store
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


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A fresh database on the PostgreSQL server of `server_url` for the block (dropped after); yields its URL."""
    import psycopg

    name = f"fleetcast_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _plain_sqlite(root: Path, flat: list[tuple[str, StatsRow]]) -> tuple[float, float]:
    plain = sqlite_utils.Database(root / "plain.db")
    plain.execute("PRAGMA journal_mode=WAL")
    plain.execute("PRAGMA synchronous=NORMAL")
    start, cpu = time.perf_counter(), time.process_time()
    plain["stats"].insert_all(
        ({"device_id": d, "model": r.model, "version": r.version, "variant": r.variant, "inferences": r.inferences,
          "errors": r.errors, "latency_sum_ms": r.latency_sum_ms, "histogram": list(r.histogram)} for d, r in flat),
        batch_size=1000)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    plain.close()
    return took, cpu


def _plain_postgres(url: str, flat: list[tuple[str, StatsRow]]) -> float:
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE stats (device_id text, model text, version text, variant text, inferences bigint,"
                     " errors bigint, latency_sum_ms double precision, histogram bigint[])")
        conn.commit()
        start = time.perf_counter()
        with conn.cursor() as c, c.copy("COPY stats FROM STDIN") as copy:
            for d, r in flat:
                copy.write_row((d, r.model, r.version, r.variant, r.inferences, r.errors, r.latency_sum_ms,
                                list(r.histogram)))
        conn.commit()
        return time.perf_counter() - start


def _ingest(store: Store, work: list[list[Batch]]) -> tuple[float, float, int, int]:
    writer = TelemetryWriter(store=store)

    async def send_all() -> tuple[float, float]:
        async def sender(batches: list[Batch]) -> None:
            for b in batches:
                assert await writer.submit(b.device_id, b) is False
        t0, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(sender(b) for b in work))
        took, cpu = time.perf_counter() - t0, time.process_time() - cpu
        resent = [b for batches in work for b in batches[::10]]
        flags = await asyncio.gather(*(writer.submit(b.device_id, b) for b in resent))
        assert all(flags), "a resent batch was counted again"
        return took, cpu
    try:
        ours_s, ours_cpu_s = asyncio.run(send_all())
        counted = sum(a.inferences for a in store.aggregates())
    finally:
        store.close()
    return ours_s, ours_cpu_s, counted, writer.flushes


def compare(*, rows: int, senders: int, rows_per_batch: int, store_url: str | None = None) -> str:
    work = _batches(rows, senders, rows_per_batch)
    flat = [(b.device_id, r) for batches in work for b in batches for r in b.stats]
    if store_url and not store_url.startswith("sqlite:"):
        with postgres_database(store_url) as url:
            plain_s = _plain_postgres(url, flat)
            ours_s, _, counted, flushes = _ingest(open_store(url), work)
            cpu = ""   # most of the work is the database server's, not this process's
        kind, baseline = "postgresql", "copy"
    else:
        with tempfile.TemporaryDirectory(prefix="fleetcast-ingest-") as tmp:
            plain_s, plain_cpu_s = _plain_sqlite(Path(tmp), flat)
            ours_s, ours_cpu_s, counted, flushes = _ingest(open_store(f"sqlite://{Path(tmp) / 'fleetcast.db'}"), work)
            # CPU seconds of this process (both threads): what a loaded machine's waits leave out
            cpu = f" cpu_ratio={plain_cpu_s / ours_cpu_s:.2f}"
        kind, baseline = "sqlite", "insert_all"
    expected = sum(r.inferences for _, r in flat)
    assert counted == expected, f"aggregates count {counted} inferences, sent {expected}"
    return (f"RESULT telemetry store={kind} rows={len(flat)} senders={senders} rows_per_batch={rows_per_batch} "
            f"ingest_rows_per_s={len(flat) / ours_s:.0f} {baseline}_rows_per_s={len(flat) / plain_s:.0f} "
            f"ratio={plain_s / ours_s:.2f}{cpu} flushes={flushes} counted_exactly_once=True")


def profile_flush(*, rows: int, senders: int, rows_per_batch: int, flushes: int, store_url: str | None = None,
                  top: int = 12) -> str:
    """The flush alone: every batch through `ingest_telemetry_many` in `flushes` calls, profiled."""
    per_sender = _batches(rows, senders, rows_per_batch)
    # in the order the writer sees them: every sender's first batch, then every second one...
    batches = [TelemetryBatch(b.device_id, b.batch_id, b.stats)
               for k in range(max(map(len, per_sender))) for mine in per_sender if k < len(mine) for b in (mine[k],)]
    size = -(-len(batches) // flushes)
    with tempfile.TemporaryDirectory(prefix="fleetcast-flush-") as tmp:
        if store_url and not store_url.startswith("sqlite:"):
            with postgres_database(store_url) as url:
                return _profiled(open_store(url), batches, size, top)
        return _profiled(open_store(f"sqlite://{Path(tmp) / 'fleetcast.db'}"), batches, size, top)


def _profiled(store: Store, batches: list[TelemetryBatch], size: int, top: int) -> str:
    profile = cProfile.Profile()
    try:
        start = time.perf_counter()
        profile.enable()
        for i in range(0, len(batches), size):
            store.ingest_telemetry_many(batches[i:i + size], 1_000_000.0 + i)
        profile.disable()
        took = time.perf_counter() - start
        counted = sum(a.inferences for a in store.aggregates())
    finally:
        store.close()
    assert counted == sum(r.inferences for b in batches for r in b.rows), "a row was lost or counted twice"
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
    rows = sum(len(b.rows) for b in batches)
    return (f"RESULT flush rows={rows} flushes={-(-len(batches) // size)} rows_per_s={rows / took:.0f}"
            f" (under cProfile)\n" + out.getvalue())
