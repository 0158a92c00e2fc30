"""Telemetry: the dedupe table, the per-device aggregates, the minute windows and the fleet
sums per hardware class, in one transaction.

A flush is a fixed number of statements whatever its size: one INSERT of every batch
id (unnest; ON CONFLICT DO NOTHING tells the new ones), one read of the devices'
hardware classes, one binary COPY and one upsert per table (aggregates, device windows,
cohort series, fleet sums) that adds to the stored rows in SQL, so two replicas
ingesting for the same device or cohort never lose a sum, and one UPDATE of the
devices' last_seen. Keys are sorted, so concurrent flushes lock rows in one order.

Histograms are one bigint column per bucket (`BUCKET_COLUMNS`, ADR 0009), added by
`h0 = LEAST(t.h0 + excluded.h0, cap)`; readers gather them with ARRAY[h0, ...]. Python
sums only the device windows per row: a flush has one minute, so the other tables'
sums are the windows' regrouped, per key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import psycopg

from fleetcast.server.store import (
    MAX_AGGREGATE_COUNT,
    MAX_AGGREGATE_LATENCY_MS,
    WINDOW_S,
    Aggregate,
    SeriesRow,
    StatsRow,
    UNKNOWN_HARDWARE,
    FleetAggregate,
    TelemetryBatch,
    WindowRow,
)
from fleetcast.server.store import rows as records
from fleetcast.server.store.rows import BUCKET_COLUMNS, Sums, add
from fleetcast.server.store.postgres.database import Database

HISTOGRAM: Final = f"ARRAY[{', '.join(BUCKET_COLUMNS)}] AS histogram"   # what readers select
SUMMED: Final = ("inferences", "errors", "latency_sum_ms", *BUCKET_COLUMNS)

# (table, key columns with their types) for each family of sums.
AGGREGATES: Final = ("telemetry_aggregates", (("device_id", "text"), ("model", "text"), ("version", "text"),
                                              ("variant", "text")))
WINDOWS: Final = ("telemetry_windows", (("model", "text"), ("minute", "int8"), ("device_id", "text"),
                                        ("version", "text"), ("variant", "text"), ("backend", "text")))
SERIES: Final = ("telemetry_series", (("model", "text"), ("minute", "int8"), ("version", "text"),
                                      ("variant", "text"), ("hardware_class", "text"), ("backend", "text")))
FLEET: Final = ("telemetry_fleet", (("model", "text"), ("version", "text"), ("variant", "text"),
                                    ("hardware_class", "text"), ("backend", "text")))
Family = tuple[str, tuple[tuple[str, str], ...]]


def _limit(column: str) -> str:
    return repr(MAX_AGGREGATE_LATENCY_MS) if column == "latency_sum_ms" else str(MAX_AGGREGATE_COUNT)


def _row(key: tuple[Any, ...], acc: Sums) -> tuple[Any, ...]:
    """A staged row: the key and its sums, stopped at the limits (one max() when none is near)."""
    histogram = acc.histogram if max(acc.histogram) <= MAX_AGGREGATE_COUNT else \
        [min(n, MAX_AGGREGATE_COUNT) for n in acc.histogram]
    return (*key, min(acc.inferences, MAX_AGGREGATE_COUNT), min(acc.errors, MAX_AGGREGATE_COUNT),
            min(acc.latency_sum_ms, MAX_AGGREGATE_LATENCY_MS), *histogram)


def _merge_into(c: psycopg.Cursor[Any], family: Family, sums: dict[tuple[Any, ...], Sums],
                updated_at: float | None = None) -> None:
    """Adds `sums` to the rows of the family's table: one binary COPY into a temporary
    table like it (emptied at commit), then one INSERT ... SELECT that adds column by
    column on conflict, keys sorted (concurrent flushes lock rows in one order), each
    sum stopped at its limit."""
    if not sums:
        return
    table, key_columns = family
    keys = [name for name, _ in key_columns]
    tail = () if updated_at is None else ("updated_at",)
    columns = ", ".join((*keys, *SUMMED, *tail))
    c.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table}_staged (LIKE {table}) ON COMMIT DELETE ROWS")
    with c.copy(f"COPY {table}_staged ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types([kind for _, kind in key_columns] + ["int8", "int8", "float8"]
                       + ["int8"] * len(BUCKET_COLUMNS) + ["float8"] * len(tail))
        extra = () if updated_at is None else (updated_at,)
        for key in sorted(sums):
            copy.write_row((*_row(key, sums[key]), *extra))
    c.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {table}_staged ORDER BY {', '.join(keys)}"
              f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
              + ", ".join(f"{col} = LEAST({table}.{col} + excluded.{col}, {_limit(col)})" for col in SUMMED)
              + ("" if updated_at is None else ", updated_at = excluded.updated_at"))


def has_array_histograms(c: psycopg.Cursor[Any], table: str) -> bool:
    return c.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
                     " AND table_name = %s AND column_name = 'histogram'", (table,)).fetchone() is not None


def convert_from_arrays(c: psycopg.Cursor[Any], table: str) -> None:
    """Spreads a table's bigint[] histograms into bucket columns, row for row in SQL; a
    table already converted is left as it is."""
    if not has_array_histograms(c, table):
        return
    c.execute(f"ALTER TABLE {table} " + ", ".join(f"ADD COLUMN {h} bigint NOT NULL DEFAULT 0" for h in BUCKET_COLUMNS))
    c.execute(f"UPDATE {table} SET " + ", ".join(f"{h} = COALESCE(histogram[{i + 1}], 0)"
                                                  for i, h in enumerate(BUCKET_COLUMNS)))
    c.execute(f"ALTER TABLE {table} DROP COLUMN histogram")


def fill_fleet(c: psycopg.Cursor[Any]) -> None:
    """Adds every stored aggregate to the (new, empty, bigint[]-layout) fleet sums of its
    device's hardware class, with no back end: the fill of the migration that made them."""
    stored = "a.histogram" if has_array_histograms(c, "telemetry_aggregates") else \
        f"ARRAY[{', '.join(f'a.{h}' for h in BUCKET_COLUMNS)}]"
    fleet: dict[tuple[Any, ...], Sums] = {}
    for row in c.execute(
            "SELECT a.model, a.version, a.variant, COALESCE(d.hardware_class, %s), a.inferences, a.errors,"
            f" a.latency_sum_ms, {stored} FROM telemetry_aggregates a LEFT JOIN devices d"
            " ON d.device_id = a.device_id", (UNKNOWN_HARDWARE,)).fetchall():
        add(fleet, (*row[:4], ""), StatsRow("", "", "", row[4], row[5], row[6], tuple(row[7])))
    for key, s in fleet.items():
        c.execute("INSERT INTO telemetry_fleet VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                  (*key, min(s.inferences, MAX_AGGREGATE_COUNT), min(s.errors, MAX_AGGREGATE_COUNT),
                   min(s.latency_sum_ms, MAX_AGGREGATE_LATENCY_MS), [min(n, MAX_AGGREGATE_COUNT) for n in s.histogram]))


class TelemetryTables(Database):
    def ingest_telemetry(self, device_id: str, batch_id: str, rows: Sequence[StatsRow], at: float) -> bool:
        """Counts a batch once: returns True (duplicate) when (device, batch) was seen before."""
        return self.ingest_telemetry_many([TelemetryBatch(device_id, batch_id, rows)], at)[0]

    def ingest_telemetry_many(self, batches: Sequence[TelemetryBatch], at: float) -> list[bool]:
        """Counts each batch once, all in one transaction; one flag per batch, True for a
        duplicate (seen before, or earlier in `batches`)."""
        ids = list(dict.fromkeys((b.device_id, b.batch_id) for b in batches))
        minute = int(at // WINDOW_S)
        windows: dict[tuple[Any, ...], Sums] = {}
        duplicates: list[bool] = []
        with self._tx() as c:
            new = {(r["device_id"], r["batch_id"]) for r in c.execute(
                "INSERT INTO telemetry_batches (device_id, batch_id, received_at)"
                " SELECT d, b, %s FROM unnest(%b::text[], %b::text[]) AS u(d, b)"
                " ON CONFLICT DO NOTHING RETURNING device_id, batch_id",
                (at, [d for d, _ in ids], [b for _, b in ids])).fetchall()}
            for b in batches:
                key = (b.device_id, b.batch_id)
                duplicates.append(key not in new)
                if key not in new:
                    continue
                new.discard(key)   # the same batch again later in this call is a duplicate
                for r in b.rows:
                    add(windows, (r.model, minute, b.device_id, r.version, r.variant, r.backend), r)
            device_ids = sorted({key[2] for key in windows})
            hardware = {r["device_id"]: r["hardware_class"] for r in c.execute(
                "SELECT device_id, hardware_class FROM devices WHERE device_id = ANY(%b)", (device_ids,)).fetchall()}
            # one minute per flush: the windows' sums are every other table's, regrouped
            totals: dict[tuple[Any, ...], Sums] = {}
            series: dict[tuple[Any, ...], Sums] = {}
            fleet: dict[tuple[Any, ...], Sums] = {}
            for (model, m, device_id, version, variant, backend), sums in windows.items():
                add(totals, (device_id, model, version, variant), sums)
                add(series, (model, m, version, variant, hardware.get(device_id, ""), backend), sums)
                add(fleet, (model, version, variant, hardware.get(device_id, UNKNOWN_HARDWARE), backend), sums)
            _merge_into(c, AGGREGATES, totals, at)
            _merge_into(c, WINDOWS, windows)
            _merge_into(c, SERIES, series)
            _merge_into(c, FLEET, fleet)
            if device_ids:
                c.execute("UPDATE devices SET last_seen = %s WHERE device_id = ANY(%b)", (at, device_ids))
        return duplicates

    def aggregates(self, *, device_id: str | None = None) -> list[Aggregate]:
        sql = ("SELECT device_id, model, version, variant, inferences, errors, latency_sum_ms, "
               f"{HISTOGRAM} FROM telemetry_aggregates")
        params: tuple[Any, ...] = ()
        if device_id is not None:
            sql += " WHERE device_id = %s"
            params = (device_id,)
        rows = self._all(sql + " ORDER BY device_id, model, version, variant", params)
        return [
            Aggregate(device_id=r["device_id"], model=r["model"], version=r["version"], variant=r["variant"],
                      inferences=r["inferences"], errors=r["errors"], latency_sum_ms=r["latency_sum_ms"],
                      histogram=list(r["histogram"]))
            for r in rows
        ]

    def fleet_aggregates(self) -> list[FleetAggregate]:
        return [FleetAggregate(model=r["model"], version=r["version"], variant=r["variant"],
                               hardware_class=r["hardware_class"], backend=r["backend"], inferences=r["inferences"],
                               errors=r["errors"], latency_sum_ms=r["latency_sum_ms"], histogram=list(r["histogram"]))
                for r in self._all("SELECT model, version, variant, hardware_class, backend, inferences, errors,"
                                   f" latency_sum_ms, {HISTOGRAM} FROM telemetry_fleet"
                                   " ORDER BY model, version, variant, hardware_class, backend")]

    def window_rows(self, model: str, *, since: float, until: float | None = None,
                    device_ids: Sequence[str] | None = None) -> list[WindowRow]:
        first, last = records.minutes(since, until)
        sql = ("SELECT model, minute, device_id, version, variant, backend, inferences, errors, latency_sum_ms,"
               f" {HISTOGRAM} FROM telemetry_windows WHERE model = %s AND minute BETWEEN %s AND %s")
        params: tuple[Any, ...] = (model, first, last)
        if device_ids is not None:
            sql += " AND device_id = ANY(%s)"
            params += (list(device_ids),)
        return [records.window_row(r, list(r["histogram"])) for r in self._all(sql + " ORDER BY minute, device_id", params)]

    def series_rows(self, model: str, *, since: float, until: float | None = None) -> list[SeriesRow]:
        first, last = records.minutes(since, until)
        return [
            records.series_row(r, list(r["histogram"]))
            for r in self._all("SELECT model, minute, version, variant, hardware_class, backend, inferences, errors,"
                               f" latency_sum_ms, {HISTOGRAM} FROM telemetry_series"
                               " WHERE model = %s AND minute BETWEEN %s AND %s ORDER BY minute", (model, first, last))
        ]

    def prune_windows(self, *, devices_before: float, series_before: float) -> int:
        with self._tx() as c:
            c.execute("DELETE FROM telemetry_windows WHERE minute < %s", (int(devices_before // WINDOW_S),))
            n = c.rowcount
            c.execute("DELETE FROM telemetry_series WHERE minute < %s", (int(series_before // WINDOW_S),))
            return n + c.rowcount
