"""Telemetry: the dedupe table and the per-device aggregates, written in one transaction.

A flush is three statements whatever its size: one INSERT of every batch id (unnest,
ON CONFLICT DO NOTHING tells the new ones), one upsert of every aggregate key (unnest)
that adds to the stored rows in SQL (so two replicas ingesting for the same device
never lose a sum), and one UPDATE of the devices' last_seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fleetcast.proto import telemetry as buckets
from fleetcast.server.store import (
    MAX_AGGREGATE_COUNT,
    MAX_AGGREGATE_LATENCY_MS,
    Aggregate,
    StatsRow,
    TelemetryBatch,
    saturating_add,
)
from fleetcast.server.store.postgres.database import Database

# One statement for every key of a flush: columns as arrays (histograms as array literals),
# unnested in key order so concurrent flushes lock rows in one order.
_UPSERT = (
    "INSERT INTO telemetry_aggregates SELECT d, m, v, x, n, e, l, h::bigint[], %(at)s FROM unnest("
    "%(d)s::text[], %(m)s::text[], %(v)s::text[], %(x)s::text[], %(n)s::bigint[], %(e)s::bigint[],"
    " %(l)s::float8[], %(h)s::text[]) AS u(d, m, v, x, n, e, l, h) ORDER BY d, m, v, x"
    " ON CONFLICT (device_id, model, version, variant) DO UPDATE SET"
    " inferences = LEAST(telemetry_aggregates.inferences + excluded.inferences, %(cap)s),"
    " errors = LEAST(telemetry_aggregates.errors + excluded.errors, %(cap)s),"
    " latency_sum_ms = LEAST(telemetry_aggregates.latency_sum_ms + excluded.latency_sum_ms, %(lcap)s),"
    " histogram = ARRAY(SELECT LEAST(COALESCE(a, 0) + COALESCE(b, 0), %(cap)s) FROM"
    " unnest(telemetry_aggregates.histogram, excluded.histogram) WITH ORDINALITY AS u(a, b, i) ORDER BY i),"
    " updated_at = excluded.updated_at"
)


class TelemetryTables(Database):
    def ingest_telemetry(self, device_id: str, batch_id: str, rows: Sequence[StatsRow], at: float) -> bool:
        """Counts a batch once: returns True (duplicate) when (device, batch) was seen before."""
        return self.ingest_telemetry_many([TelemetryBatch(device_id, batch_id, rows)], at)[0]

    def ingest_telemetry_many(self, batches: Sequence[TelemetryBatch], at: float) -> list[bool]:
        """Counts each batch once, all in one transaction; one flag per batch, True for a
        duplicate (seen before, or earlier in `batches`)."""
        ids = list(dict.fromkeys((b.device_id, b.batch_id) for b in batches))
        with self._tx() as c:
            new = {(r["device_id"], r["batch_id"]) for r in c.execute(
                "INSERT INTO telemetry_batches (device_id, batch_id, received_at)"
                " SELECT d, b, %s FROM unnest(%s::text[], %s::text[]) AS u(d, b)"
                " ON CONFLICT DO NOTHING RETURNING device_id, batch_id",
                (at, [d for d, _ in ids], [b for _, b in ids])).fetchall()}
            duplicates: list[bool] = []
            merged: dict[tuple[str, str, str, str], list[Any]] = {}
            for b in batches:
                key = (b.device_id, b.batch_id)
                duplicates.append(key not in new)
                if key not in new:
                    continue
                new.discard(key)   # the same batch again later in this call is a duplicate
                for r in b.rows:
                    acc = merged.setdefault((b.device_id, r.model, r.version, r.variant),
                                            [0, 0, 0.0, buckets.empty()])
                    acc[0] += r.inferences
                    acc[1] += r.errors
                    acc[2] += r.latency_sum_ms
                    buckets.merge(acc[3], r.histogram)
            # Sums stop at the aggregate limits, here and in the upsert.
            keys = sorted(merged)
            if keys:
                c.execute(_UPSERT, {
                    "d": [k[0] for k in keys], "m": [k[1] for k in keys], "v": [k[2] for k in keys],
                    "x": [k[3] for k in keys], "at": at,
                    "n": [saturating_add(merged[k][0], 0, MAX_AGGREGATE_COUNT) for k in keys],
                    "e": [saturating_add(merged[k][1], 0, MAX_AGGREGATE_COUNT) for k in keys],
                    "l": [saturating_add(merged[k][2], 0.0, MAX_AGGREGATE_LATENCY_MS) for k in keys],
                    "h": ["{" + ",".join(str(saturating_add(n, 0, MAX_AGGREGATE_COUNT)) for n in merged[k][3]) + "}"
                          for k in keys],
                    "cap": MAX_AGGREGATE_COUNT, "lcap": MAX_AGGREGATE_LATENCY_MS})
            if merged:
                c.execute("UPDATE devices SET last_seen = %s WHERE device_id = ANY(%s)",
                          (at, sorted({key[0] for key in merged})))
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
