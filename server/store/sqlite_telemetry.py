"""The SQLite store's telemetry tables: histograms as one column per bucket, summed by SQL.

Each of the four tables (per-device aggregates, per-device minute windows, per-cohort
minute series, per-hardware-class fleet sums) keeps a latency histogram as the columns
`h0` .. `h66` (`fleetcast.proto.telemetry` buckets), so a flush adds to the stored rows
with `ON CONFLICT DO UPDATE SET h0 = h0 + excluded.h0, ...`, then stops the few rows
that passed the aggregate limits there, and never reads a histogram back into Python
(ADR 0009). A flush puts its fresh rows once into a temporary table; the device
windows are upserted from it row by row, the cohort series and fleet sums from one
GROUP BY of it joined with the devices' hardware classes, all in the caller's
transaction.

The cumulative per-device aggregates are the device windows folded in: once a minute
has closed, the first flush after it adds that minute's windows to the aggregates (one
GROUP BY per minute, not one upsert per row and flush) and moves the watermark in
`telemetry_folded`; readers add the windows past the watermark (a minute or two), so
what they return is the same at every moment. A flush whose minute is already folded
(the clock went back) adds to the aggregates directly. Rows come checked (`telemetry.check_batch`: counts up to 2^32 a batch), so
neither a flush's sums nor a stored sum plus a flush's can leave int64.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from fleetcast.proto import telemetry as buckets
from fleetcast.server.store import (
    MAX_AGGREGATE_COUNT,
    MAX_AGGREGATE_LATENCY_MS,
    UNKNOWN_HARDWARE,
    WINDOW_S,
    TelemetryBatch,
)
from fleetcast.server.store.rows import BUCKET_COLUMNS

COUNTS: Final = ("inferences", "errors", "latency_sum_ms")
# `samples` is the histogram's total (stopped at the limit like the rest): no bucket can
# pass the limit unless it does, so one cheap test per row finds the rows to clamp.
SUMMED: Final = (*COUNTS, "samples", *BUCKET_COLUMNS)

# table -> (key columns, whether it keeps updated_at)
TABLES: Final[dict[str, tuple[tuple[str, ...], bool]]] = {
    "telemetry_aggregates": (("device_id", "model", "version", "variant"), True),
    "telemetry_windows": (("model", "minute", "device_id", "version", "variant", "backend"), False),
    "telemetry_series": (("model", "minute", "version", "variant", "hardware_class", "backend"), False),
    "telemetry_fleet": (("model", "version", "variant", "hardware_class", "backend"), False),
}
_INTEGER_KEYS: Final = {"minute"}
_CAP: Final = MAX_AGGREGATE_COUNT
_LATENCY_CAP: Final = MAX_AGGREGATE_LATENCY_MS
_PAST_LIMITS: Final = (f"inferences > {_CAP} OR errors > {_CAP} OR samples > {_CAP}"
                       f" OR latency_sum_ms > {_LATENCY_CAP!r}")

# One flush's fresh rows, and their sums per cohort (a connection's own temporary tables).
_STAGED_COLUMNS: Final = ("device_id", "model", "version", "variant", "backend", *SUMMED)
_COHORT_COLUMNS: Final = ("model", "version", "variant", "hardware_class", "backend", *SUMMED)


def _limit(column: str) -> str:
    return repr(_LATENCY_CAP) if column == "latency_sum_ms" else str(_CAP)


def create_table(c: sqlite3.Connection, table: str, name: str | None = None) -> None:
    """One telemetry table in the bucket-column layout, with the partial index of the rows
    a flush pushed past the limits (empty between flushes)."""
    keys, updated = TABLES[table]
    name = name or table
    columns = [f"{k} {'INTEGER' if k in _INTEGER_KEYS else 'TEXT'} NOT NULL" for k in keys]
    columns += ["inferences INTEGER NOT NULL", "errors INTEGER NOT NULL", "latency_sum_ms REAL NOT NULL"]
    columns += [f"{h} INTEGER NOT NULL DEFAULT 0" for h in ("samples", *BUCKET_COLUMNS)]
    if updated:
        columns.append("updated_at REAL NOT NULL")
    # a rowid table: WITHOUT ROWID made the upserts 20 % slower (rows this wide fill its pages)
    c.execute(f"CREATE TABLE {name} ({', '.join(columns)}, PRIMARY KEY ({', '.join(keys)}))")


def _create_index(c: sqlite3.Connection, table: str) -> None:
    c.execute(f"CREATE INDEX {table}_past_limits ON {table} (samples) WHERE {_PAST_LIMITS}")


def has_json_histograms(c: sqlite3.Connection, table: str) -> bool:
    return any(row[1] == "histogram" for row in c.execute(f"PRAGMA table_info({table})"))


def convert_from_json(c: sqlite3.Connection, table: str) -> None:
    """Rewrites a table of JSON histograms (`histogram` TEXT) into bucket columns, row for
    row in SQL; a table already converted is left as it is."""
    if not has_json_histograms(c, table):
        return
    keys, updated = TABLES[table]
    spread = ", ".join(f"COALESCE(json_extract(histogram, '$[{i}]'), 0)" for i in range(buckets.BUCKETS))
    total = f"MIN((SELECT COALESCE(SUM(value), 0) FROM json_each(histogram)), {_CAP})"
    tail = ", updated_at" if updated else ""
    create_table(c, table, f"{table}_buckets")
    c.execute(f"INSERT INTO {table}_buckets ({', '.join((*keys, *SUMMED))}{tail})"
              f" SELECT {', '.join((*keys, *COUNTS))}, {total}, {spread}{tail} FROM {table}")
    c.execute(f"DROP TABLE {table}")
    c.execute(f"ALTER TABLE {table}_buckets RENAME TO {table}")
    _create_index(c, table)


def select_list(table: str) -> str:
    """The columns readers select, in this order: keys, counts, buckets (then updated_at)."""
    keys, updated = TABLES[table]
    return ", ".join((*keys, *COUNTS, *BUCKET_COLUMNS, *(("updated_at",) if updated else ())))


def histogram_of(table: str, row: Sequence[Any]) -> list[int]:
    """The bucket counts of a row of `table` selected with `select_list`."""
    start = len(TABLES[table][0]) + len(COUNTS)
    return list(row[start:start + buckets.BUCKETS])


def _upsert(table: str, select: str) -> str:
    """INSERT ... SELECT that adds to the stored sums on conflict (plain additions: `_clamp`
    then stops what passed the limits, the same as MIN on every column at less than half the cost)."""
    keys, updated = TABLES[table]
    names = ", ".join((*keys, *SUMMED, *(("updated_at",) if updated else ())))
    on_conflict = ", ".join(f"{col} = {col} + excluded.{col}" for col in SUMMED)
    if updated:
        on_conflict += ", updated_at = excluded.updated_at"
    return (f"INSERT INTO {table} ({names}) {select}"   # `select` has a WHERE: ON CONFLICT then parses as upsert
            f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {on_conflict}")


def _clamp(table: str) -> str:
    """Stops the rows a flush pushed past the limits there (found by the partial index)."""
    return (f"UPDATE {table} INDEXED BY {table}_past_limits SET "
            + ", ".join(f"{col} = MIN({col}, {_limit(col)})" for col in SUMMED) + f" WHERE {_PAST_LIMITS}")


_SUMS: Final = ", ".join(SUMMED)
_GROUPED_SUMS: Final = ", ".join(f"SUM(s.{col})" for col in SUMMED)
_STAGE_SQL: Final = f"INSERT INTO temp.telemetry_staged VALUES ({', '.join('?' * len(_STAGED_COLUMNS))})"
_COHORTS_SQL: Final = (f"INSERT INTO temp.telemetry_cohorts SELECT s.model, s.version, s.variant, d.hardware_class,"
                       f" s.backend, {_GROUPED_SUMS} FROM temp.telemetry_staged s LEFT JOIN devices d"
                       " ON d.device_id = s.device_id GROUP BY s.model, s.version, s.variant, d.hardware_class,"
                       " s.backend")
_WRITES: Final = (
    _upsert("telemetry_windows", f"SELECT model, :minute, device_id, version, variant, backend, {_SUMS}"
                                 " FROM temp.telemetry_staged WHERE true"),
    # minute is one for the whole flush: the cohorts' sums are both the series' and the fleet's
    _upsert("telemetry_series", f"SELECT model, :minute, version, variant, COALESCE(hardware_class, ''), backend,"
                                f" {_SUMS} FROM temp.telemetry_cohorts WHERE true"),
    _upsert("telemetry_fleet", f"SELECT model, version, variant, COALESCE(hardware_class, '{UNKNOWN_HARDWARE}'),"
                               f" backend, {_SUMS} FROM temp.telemetry_cohorts WHERE true"),
    *(_clamp(table) for table in ("telemetry_windows", "telemetry_series", "telemetry_fleet")),
    "UPDATE devices SET last_seen = :at WHERE device_id IN (SELECT device_id FROM temp.telemetry_staged)",
)


_HISTOGRAM_SUMS: Final = ", ".join(f"SUM({col})" for col in SUMMED)
_FOLD_SQL: Final = _upsert("telemetry_aggregates", f"SELECT device_id, model, version, variant, {_HISTOGRAM_SUMS}, :at"
                           " FROM telemetry_windows INDEXED BY telemetry_windows_minute"
                           " WHERE minute > :folded AND minute <= :until GROUP BY device_id, model, version, variant")
_DIRECT_SQL: Final = _upsert("telemetry_aggregates", f"SELECT device_id, model, version, variant, {_SUMS}, :at"
                             " FROM temp.telemetry_staged WHERE true")


def create_fold(c: sqlite3.Connection) -> None:
    """The watermark of the windows folded into the aggregates (every window stored so far
    is in them already when this is made), and the index the fold and readers scan."""
    c.execute("CREATE TABLE telemetry_folded (minute INTEGER NOT NULL)")
    c.execute("INSERT INTO telemetry_folded SELECT COALESCE(MAX(minute), 0) FROM telemetry_windows")
    c.execute("CREATE INDEX telemetry_windows_minute ON telemetry_windows (minute, device_id)")
    c.execute("CREATE INDEX telemetry_windows_device ON telemetry_windows (device_id, minute)")   # one device's


def fold(c: sqlite3.Connection, *, until: int, at: float) -> int:
    """Adds the windows of minutes past the watermark up to `until` to the aggregates and
    moves the watermark there; returns the watermark (in the caller's transaction)."""
    folded = c.execute("SELECT minute FROM telemetry_folded").fetchone()[0]
    if until > folded:
        c.execute(_FOLD_SQL, {"folded": folded, "until": until, "at": at})
        c.execute(_clamp("telemetry_aggregates"))
        c.execute("UPDATE telemetry_folded SET minute = ?", (until,))
        return until
    return folded


_AGGREGATE_KEYS: Final = "device_id, model, version, variant"


def _aggregates_select(mine: str) -> str:
    sums = ", ".join(f"MIN(SUM({col}), {_limit(col)}) AS {col}" for col in (*COUNTS, *BUCKET_COLUMNS))
    index = "telemetry_windows_device" if mine else "telemetry_windows_minute"
    return (f"SELECT {_AGGREGATE_KEYS}, {sums} FROM (SELECT {_AGGREGATE_KEYS}, {_SUMS} FROM telemetry_aggregates"
            f" WHERE true{mine} UNION ALL SELECT {_AGGREGATE_KEYS}, {_SUMS} FROM telemetry_windows"
            f" INDEXED BY {index} WHERE minute > (SELECT minute FROM telemetry_folded){mine})"
            f" GROUP BY {_AGGREGATE_KEYS}")


def aggregates_sql(device_id: str | None) -> tuple[str, dict[str, Any]]:
    """The aggregates as readers see them: the stored sums plus the windows not folded in
    yet, in the columns of `select_list` (without updated_at), ordered by key."""
    mine = "" if device_id is None else " AND device_id = :device_id"
    return f"{_aggregates_select(mine)} ORDER BY {_AGGREGATE_KEYS}", {"device_id": device_id}


def _has_table(c: sqlite3.Connection, name: str) -> bool:
    return c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _staged_rows(batches: Sequence[TelemetryBatch]) -> list[tuple[Any, ...]]:
    rows = []
    for b in batches:
        d = b.device_id
        for r in b.rows:
            if len(r.histogram) != buckets.BUCKETS:
                raise ValueError(f"histogram has {len(r.histogram)} buckets, expected {buckets.BUCKETS}")
            histogram = tuple(r.histogram)   # the same object when it is a tuple already
            rows.append((d, r.model, r.version, r.variant, r.backend, r.inferences, r.errors, r.latency_sum_ms,
                         sum(histogram)) + histogram)
    return rows


def add_batches(c: sqlite3.Connection, fresh: Sequence[TelemetryBatch], at: float) -> None:
    """Adds the rows of batches not counted before to the four tables and touches their
    devices, in the caller's transaction (which holds the write lock)."""
    rows = _staged_rows(fresh)
    if not rows:
        return
    c.execute(f"CREATE TEMP TABLE IF NOT EXISTS telemetry_staged ({', '.join(_STAGED_COLUMNS)})")
    c.execute(f"CREATE TEMP TABLE IF NOT EXISTS telemetry_cohorts ({', '.join(_COHORT_COLUMNS)})")
    c.execute("DELETE FROM temp.telemetry_staged")
    c.execute("DELETE FROM temp.telemetry_cohorts")
    c.executemany(_STAGE_SQL, rows)
    c.execute(_COHORTS_SQL)
    minute = int(at // WINDOW_S)
    params = {"at": at, "minute": minute}
    if fold(c, until=minute - 1, at=at) >= minute:   # this minute is folded already: the clock went back
        c.execute(_DIRECT_SQL, params)
        c.execute(_clamp("telemetry_aggregates"))
    for sql in _WRITES:
        c.execute(sql, params)


def fill_fleet_from_aggregates(c: sqlite3.Connection) -> None:
    """Sums every stored aggregate into the (new, empty, JSON-layout) fleet table of its
    device's hardware class, with no back end: the fill of the migration that made it."""
    json_layout = has_json_histograms(c, "telemetry_aggregates")
    hist = "a.histogram" if json_layout else ", ".join(f"a.{h}" for h in BUCKET_COLUMNS)
    # the aggregates as readers see them (with the windows not folded yet) once there is a fold
    stored = "telemetry_aggregates" if json_layout or not _has_table(c, "telemetry_folded") else \
        f"({_aggregates_select('')})"
    sums: dict[tuple[Any, ...], list[Any]] = {}
    for row in c.execute(
            f"SELECT a.model, a.version, a.variant, COALESCE(d.hardware_class, '{UNKNOWN_HARDWARE}'), a.inferences,"
            f" a.errors, a.latency_sum_ms, {hist} FROM {stored} a LEFT JOIN devices d"
            " ON d.device_id = a.device_id").fetchall():
        histogram = json.loads(row[7]) if json_layout else list(row[7:])
        acc = sums.setdefault(tuple(row[:4]), [0, 0, 0.0, buckets.empty()])
        acc[0], acc[1], acc[2] = acc[0] + row[4], acc[1] + row[5], acc[2] + row[6]
        buckets.merge(acc[3], histogram)
    c.executemany(
        "INSERT INTO telemetry_fleet VALUES (?, ?, ?, ?, '', ?, ?, ?, ?)",
        [(*key, min(n, MAX_AGGREGATE_COUNT), min(e, MAX_AGGREGATE_COUNT), min(lat, MAX_AGGREGATE_LATENCY_MS),
          json.dumps([min(x, MAX_AGGREGATE_COUNT) for x in h])) for key, (n, e, lat, h) in sums.items()])
