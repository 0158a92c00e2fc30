"""The telemetry tables' histogram layout migration: a database whose rows were stored by
the old layout (JSON arrays in SQLite, bigint[] in PostgreSQL) reads the same after it,
and later flushes add to the converted rows, saturating as before."""

from __future__ import annotations

import sqlite3
import time

import psycopg
import sqlite_utils

from fleetcast.proto import telemetry as buckets
from fleetcast.server.store import MAX_AGGREGATE_COUNT, WINDOW_S, StatsRow
from fleetcast.server.store import sqlite as sqlite_store
from fleetcast.server.store.open import sqlite_path
from fleetcast.server.store.postgres import schema as pg_schema
from tests.integration.store.conftest import OpenStore, run_sql

LAYOUT_MIGRATION = "histograms_in_bucket_columns"
MINUTE = 28_333_334


def _old_schema(store_url: str) -> None:
    """Applies every migration before the layout's, as a server of the old layout did."""
    if store_url.startswith("sqlite:"):
        db = sqlite_utils.Database(sqlite3.connect(sqlite_path(store_url)))
        db.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        for step in sqlite_store.MIGRATIONS[:[m.__name__ for m in sqlite_store.MIGRATIONS].index(LAYOUT_MIGRATION)]:
            with db.conn:
                step(db)
                db.execute("INSERT INTO migrations VALUES (?, ?)", [step.__name__, time.time()])
        db.conn.close()
        return
    with psycopg.connect(store_url, autocommit=True) as conn, conn.cursor() as c:
        c.execute("CREATE TABLE migrations (name text COLLATE \"C\" PRIMARY KEY, applied_at double precision NOT NULL,"
                  " position bigserial)")
        for step in pg_schema.MIGRATIONS[:[m.__name__ for m in pg_schema.MIGRATIONS].index(LAYOUT_MIGRATION)]:
            with conn.transaction():
                step(c)
                c.execute("INSERT INTO migrations (name, applied_at) VALUES (%s, %s)", (step.__name__, time.time()))


def _histogram(store_url: str, counts: list[int]) -> str:
    return ("'[" if store_url.startswith("sqlite:") else "'{") + ",".join(map(str, counts)) + \
        ("]'" if store_url.startswith("sqlite:") else "}'")


def test_rows_of_the_old_layout_read_the_same_and_keep_adding_up(store_url: str, open_store: OpenStore) -> None:
    _old_schema(store_url)
    near = MAX_AGGREGATE_COUNT - 5
    h1 = [(i * 7) % 11 for i in range(buckets.BUCKETS)]
    h2 = [0] * buckets.BUCKETS
    h2[3], h2[66] = near, 4   # one below the limit in all
    run_sql(store_url,
            "INSERT INTO devices (device_id, token_sha256, hardware_class, backends, grp, labels, agent_version,"
            " enrolled_at) VALUES ('dev-1', 't1', 'jetson', '[]', '', '{}', '1', 1.0)",
            f"INSERT INTO telemetry_aggregates VALUES ('dev-1', 'm', '1', 'v', {sum(h1)}, 2, 12.5, "
            f"{_histogram(store_url, h1)}, 5.0)",
            f"INSERT INTO telemetry_aggregates VALUES ('dev-1', 'm', '2', 'v', {near + 4}, 0, 1.0, "
            f"{_histogram(store_url, h2)}, 5.0)",
            f"INSERT INTO telemetry_windows VALUES ('m', {MINUTE}, 'dev-1', '1', 'v', 'onnxruntime', {sum(h1)}, 2,"
            f" 12.5, {_histogram(store_url, h1)})",
            f"INSERT INTO telemetry_series VALUES ('m', {MINUTE}, '1', 'v', 'jetson', 'onnxruntime', {sum(h1)}, 2,"
            f" 12.5, {_histogram(store_url, h1)})",
            f"INSERT INTO telemetry_fleet VALUES ('m', '2', 'v', 'jetson', '', {near + 4}, 0, 1.0,"
            f" {_histogram(store_url, h2)})")
    store = open_store()
    assert LAYOUT_MIGRATION in store.applied_migrations()
    at = MINUTE * WINDOW_S
    assert [(a.version, a.inferences, a.errors, a.latency_sum_ms, list(a.histogram)) for a in store.aggregates()] == \
        [("1", sum(h1), 2, 12.5, h1), ("2", near + 4, 0, 1.0, h2)]
    [w] = store.window_rows("m", since=at, until=at)
    assert (w.device_id, w.backend, w.inferences, w.errors, w.latency_sum_ms, list(w.histogram)) == \
        ("dev-1", "onnxruntime", sum(h1), 2, 12.5, h1)
    [s] = store.series_rows("m", since=at, until=at)
    assert (s.hardware_class, s.inferences, list(s.histogram)) == ("jetson", sum(h1), h1)
    [f] = store.fleet_aggregates()
    assert (f.version, f.hardware_class, f.inferences, list(f.histogram)) == ("2", "jetson", near + 4, h2)

    more = [0] * buckets.BUCKETS
    more[3], more[0] = 10, 1
    store.ingest_telemetry("dev-1", "b-1", [StatsRow("m", "1", "v", 11, 1, 2.0, tuple(more), "onnxruntime"),
                                            StatsRow("m", "2", "v", 11, 0, 1.0, tuple(more))], at + 1)
    got = {a.version: a for a in store.aggregates()}
    assert list(got["1"].histogram) == [a + b for a, b in zip(h1, more)]
    assert (got["1"].inferences, got["1"].errors, got["1"].latency_sum_ms) == (sum(h1) + 11, 3, 14.5)
    saturated = list(got["2"].histogram)
    assert (saturated[3], saturated[0], saturated[66]) == (MAX_AGGREGATE_COUNT, 1, 4)    # stopped at the limit
    assert got["2"].inferences == MAX_AGGREGATE_COUNT
    [f] = [f for f in store.fleet_aggregates() if f.version == "2"]
    assert list(f.histogram) == saturated and f.inferences == MAX_AGGREGATE_COUNT   # the fleet's sums stop too
    [w] = [w for w in store.window_rows("m", since=at, until=at) if w.version == "1"]
    assert list(w.histogram) == [a + b for a, b in zip(h1, more)] and w.inferences == sum(h1) + 11
