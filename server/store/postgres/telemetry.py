"""Telemetry: the dedupe table and the per-device aggregates, written in one transaction.

A flush is three statements whatever its size: one INSERT of every batch id (unnest,
ON CONFLICT DO NOTHING tells the new ones), one pipelined upsert per aggregate key
that adds to the stored row in SQL (so two replicas ingesting for the same device
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

_UPSERT = (
    "INSERT INTO telemetry_aggregates VALUES (%(d)s, %(m)s, %(v)s, %(x)s, %(n)s, %(e)s, %(l)s, %(h)s, %(at)s)"
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
            # Sorted: concurrent flushes lock aggregate rows in one order. Sums stop at the limits.
            c.executemany(_UPSERT, [
                {"d": key[0], "m": key[1], "v": key[2], "x": key[3], "at": at,
                 "n": saturating_add(acc[0], 0, MAX_AGGREGATE_COUNT), "e": saturating_add(acc[1], 0, MAX_AGGREGATE_COUNT),
                 "l": saturating_add(acc[2], 0.0, MAX_AGGREGATE_LATENCY_MS),
                 "h": [saturating_add(n, 0, MAX_AGGREGATE_COUNT) for n in acc[3]],
                 "cap": MAX_AGGREGATE_COUNT, "lcap": MAX_AGGREGATE_LATENCY_MS}
                for key, acc in sorted(merged.items())])
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
