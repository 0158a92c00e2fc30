"""Telemetry: the dedupe table, the per-device aggregates, the minute windows and the fleet
sums per hardware class, in one transaction.

A flush is a fixed number of statements whatever its size: one INSERT of every batch
id (unnest; ON CONFLICT DO NOTHING tells the new ones), one read of the devices'
hardware classes, one upsert per table (aggregates, device windows, cohort series, fleet sums:
every key at once through unnest) that adds to the stored rows in SQL, so two
replicas ingesting for the same device or cohort never lose a sum, and one UPDATE
of the devices' last_seen. Keys are sorted, so concurrent flushes lock rows in one order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import psycopg

from fleetcast.proto import telemetry as buckets
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
    saturating_add,
)
from fleetcast.server.store import rows as records
from fleetcast.server.store.rows import Sums, add
from fleetcast.server.store.postgres.database import Database

# (table, key columns with their array types) for each family of sums.
AGGREGATES: Final = ("telemetry_aggregates", (("device_id", "text"), ("model", "text"), ("version", "text"),
                                              ("variant", "text")))
WINDOWS: Final = ("telemetry_windows", (("model", "text"), ("minute", "bigint"), ("device_id", "text"),
                                        ("version", "text"), ("variant", "text"), ("backend", "text")))
SERIES: Final = ("telemetry_series", (("model", "text"), ("minute", "bigint"), ("version", "text"),
                                      ("variant", "text"), ("hardware_class", "text"), ("backend", "text")))
FLEET: Final = ("telemetry_fleet", (("model", "text"), ("version", "text"), ("variant", "text"),
                                    ("hardware_class", "text"), ("backend", "text")))


def _histogram_sum(table: str) -> str:
    """Element-wise and saturating, one expression per bucket: no subquery per row (twice as fast)."""
    return "ARRAY[" + ", ".join(
        f"LEAST(COALESCE({table}.histogram[{i}], 0) + COALESCE(excluded.histogram[{i}], 0), {MAX_AGGREGATE_COUNT})"
        for i in range(1, buckets.BUCKETS + 1)) + "]"


def _merge_into(c: psycopg.Cursor[Any], family: tuple[str, tuple[tuple[str, str], ...]],
                sums: Mapping[tuple[Any, ...], Sums], updated_at: float | None = None) -> None:
    """Adds `sums` to the rows of the family's table in one statement (histograms sent as
    array literals); stored sums stop at the aggregate limits."""
    if not sums:
        return
    table, key_columns = family
    keys = sorted(sums)
    names = [name for name, _ in key_columns]
    arrays = [f"%({name})s::{kind}[]" for name, kind in key_columns]
    extra = "" if updated_at is None else ", %(at)s"
    counted = ("inferences", "errors")
    sql = (
        f"INSERT INTO {table} SELECT {', '.join(names)}, n, e, l, h::bigint[]{extra} FROM unnest("
        f"{', '.join(arrays)}, %(n)s::bigint[], %(e)s::bigint[], %(l)s::float8[], %(h)s::text[])"
        f" AS u({', '.join(names)}, n, e, l, h) ORDER BY {', '.join(names)}"
        f" ON CONFLICT ({', '.join(names)}) DO UPDATE SET "
        + ", ".join(f"{col} = LEAST({table}.{col} + excluded.{col}, %(cap)s)" for col in counted)
        + f", latency_sum_ms = LEAST({table}.latency_sum_ms + excluded.latency_sum_ms, %(lcap)s),"
        f" histogram = {_histogram_sum(table)}"
        + ("" if updated_at is None else ", updated_at = excluded.updated_at")
    )
    params: dict[str, Any] = {name: [k[i] for k in keys] for i, name in enumerate(names)}
    params |= {
        "at": updated_at, "cap": MAX_AGGREGATE_COUNT, "lcap": MAX_AGGREGATE_LATENCY_MS,
        "n": [saturating_add(sums[k].inferences, 0, MAX_AGGREGATE_COUNT) for k in keys],
        "e": [saturating_add(sums[k].errors, 0, MAX_AGGREGATE_COUNT) for k in keys],
        "l": [saturating_add(sums[k].latency_sum_ms, 0.0, MAX_AGGREGATE_LATENCY_MS) for k in keys],
        "h": ["{" + ",".join(str(saturating_add(n, 0, MAX_AGGREGATE_COUNT)) for n in sums[k].histogram) + "}"
              for k in keys],
    }
    c.execute(sql, params)


def fill_fleet(c: psycopg.Cursor[Any]) -> None:
    """Adds every stored aggregate to the fleet sums of its device's hardware class (an upgrade's fill)."""
    fleet: dict[tuple[Any, ...], Sums] = {}
    for row in c.execute(
            "SELECT a.model, a.version, a.variant, COALESCE(d.hardware_class, %s), a.inferences, a.errors,"
            " a.latency_sum_ms, a.histogram FROM telemetry_aggregates a LEFT JOIN devices d"
            " ON d.device_id = a.device_id", (UNKNOWN_HARDWARE,)).fetchall():
        add(fleet, (*row[:4], ""), StatsRow("", "", "", row[4], row[5], row[6], tuple(row[7])))
    _merge_into(c, FLEET, fleet)


class TelemetryTables(Database):
    def ingest_telemetry(self, device_id: str, batch_id: str, rows: Sequence[StatsRow], at: float) -> bool:
        """Counts a batch once: returns True (duplicate) when (device, batch) was seen before."""
        return self.ingest_telemetry_many([TelemetryBatch(device_id, batch_id, rows)], at)[0]

    def ingest_telemetry_many(self, batches: Sequence[TelemetryBatch], at: float) -> list[bool]:
        """Counts each batch once, all in one transaction; one flag per batch, True for a
        duplicate (seen before, or earlier in `batches`)."""
        ids = list(dict.fromkeys((b.device_id, b.batch_id) for b in batches))
        minute = int(at // WINDOW_S)
        totals: dict[tuple[Any, ...], Sums] = {}
        windows: dict[tuple[Any, ...], Sums] = {}
        by_backend: dict[tuple[Any, ...], Sums] = {}
        duplicates: list[bool] = []
        with self._tx() as c:
            new = {(r["device_id"], r["batch_id"]) for r in c.execute(
                "INSERT INTO telemetry_batches (device_id, batch_id, received_at)"
                " SELECT d, b, %s FROM unnest(%s::text[], %s::text[]) AS u(d, b)"
                " ON CONFLICT DO NOTHING RETURNING device_id, batch_id",
                (at, [d for d, _ in ids], [b for _, b in ids])).fetchall()}
            for b in batches:
                key = (b.device_id, b.batch_id)
                duplicates.append(key not in new)
                if key not in new:
                    continue
                new.discard(key)   # the same batch again later in this call is a duplicate
                for r in b.rows:
                    add(totals, (b.device_id, r.model, r.version, r.variant), r)
                    add(by_backend, (b.device_id, r.model, r.version, r.variant, r.backend), r)
                    add(windows, (r.model, minute, b.device_id, r.version, r.variant, r.backend), r)
            device_ids = sorted({key[0] for key in totals})
            hardware = {r["device_id"]: r["hardware_class"] for r in c.execute(
                "SELECT device_id, hardware_class FROM devices WHERE device_id = ANY(%s)", (device_ids,)).fetchall()}
            series: dict[tuple[Any, ...], Sums] = {}
            for (model, m, device_id, version, variant, backend), sums in windows.items():
                add(series, (model, m, version, variant, hardware.get(device_id, ""), backend), sums)
            fleet: dict[tuple[Any, ...], Sums] = {}
            for (device_id, model, version, variant, backend), sums in by_backend.items():
                add(fleet, (model, version, variant, hardware.get(device_id, UNKNOWN_HARDWARE), backend), sums)
            _merge_into(c, AGGREGATES, totals, at)
            _merge_into(c, WINDOWS, windows)
            _merge_into(c, SERIES, series)
            _merge_into(c, FLEET, fleet)
            if device_ids:
                c.execute("UPDATE devices SET last_seen = %s WHERE device_id = ANY(%s)", (at, device_ids))
        return duplicates

    def aggregates(self, *, device_id: str | None = None) -> list[Aggregate]:
        sql = "SELECT * FROM telemetry_aggregates"
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
                for r in self._all("SELECT * FROM telemetry_fleet ORDER BY model, version, variant, hardware_class,"
                                   " backend")]

    def window_rows(self, model: str, *, since: float, until: float | None = None,
                    device_ids: Sequence[str] | None = None) -> list[WindowRow]:
        first, last = records.minutes(since, until)
        sql = "SELECT * FROM telemetry_windows WHERE model = %s AND minute BETWEEN %s AND %s"
        params: tuple[Any, ...] = (model, first, last)
        if device_ids is not None:
            sql += " AND device_id = ANY(%s)"
            params += (list(device_ids),)
        return [records.window_row(r, list(r["histogram"])) for r in self._all(sql + " ORDER BY minute, device_id", params)]

    def series_rows(self, model: str, *, since: float, until: float | None = None) -> list[SeriesRow]:
        first, last = records.minutes(since, until)
        return [
            records.series_row(r, list(r["histogram"]))
            for r in self._all("SELECT * FROM telemetry_series WHERE model = %s AND minute BETWEEN %s AND %s"
                               " ORDER BY minute", (model, first, last))
        ]

    def prune_windows(self, *, devices_before: float, series_before: float) -> int:
        with self._tx() as c:
            c.execute("DELETE FROM telemetry_windows WHERE minute < %s", (int(devices_before // WINDOW_S),))
            n = c.rowcount
            c.execute("DELETE FROM telemetry_series WHERE minute < %s", (int(series_before // WINDOW_S),))
            return n + c.rowcount
