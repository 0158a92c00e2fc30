"""Staged rollouts: the rollout row, its stages, its devices and its append-only log.

`save_rollout` is a compare-and-set on `revision` (one UPDATE whose WHERE names the
revision read); its row lock is held for the rest of the transaction, so the stages,
devices and log entries of a stale save are never written, and log sequence numbers
(the next after the largest) are taken one transaction at a time per rollout: two
replicas appending never collide.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg

from fleetcast.server.store import Rollout, RolloutDevice, RolloutLogEntry, RolloutStage
from fleetcast.server.store import rows as records
from fleetcast.server.store.postgres.database import Database

_ROLLOUT_COLUMNS = ("rollout_id, model, version, target, deployment_id, state, stage, spec, created_at, updated_at,"
                    " revision")   # not `position`


def _write_parts(c: psycopg.Cursor[Any], stages: Sequence[RolloutStage], devices: Sequence[RolloutDevice],
                 entries: Sequence[RolloutLogEntry]) -> None:
    """Upserts the stages and devices and appends the log entries; the caller holds the
    lock of each rollout row these belong to."""
    c.executemany(
        "INSERT INTO rollout_stages VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (rollout_id, idx) DO UPDATE"
        " SET size = excluded.size, state = excluded.state, started_at = excluded.started_at,"
        " soak_started_at = excluded.soak_started_at, ended_at = excluded.ended_at, results = excluded.results",
        [(x.rollout_id, x.index, x.size, x.state, x.started_at, x.soak_started_at, x.ended_at,
          json.dumps(list(x.results))) for x in stages])
    c.executemany(
        "INSERT INTO rollout_devices VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (rollout_id, device_id)"
        " DO UPDATE SET stage = excluded.stage, cohort = excluded.cohort, variant = excluded.variant,"
        " state = excluded.state, reason = excluded.reason, assigned_at = excluded.assigned_at,"
        " updated_at = excluded.updated_at",
        [(d.rollout_id, d.device_id, d.stage, d.cohort, d.variant, d.state, d.reason, d.assigned_at, d.updated_at)
         for d in sorted(devices, key=lambda d: (d.rollout_id, d.device_id))])
    for rollout_id in sorted({e.rollout_id for e in entries}):
        # The rollout's row lock (already held after its INSERT or UPDATE) orders appenders.
        c.execute("SELECT 1 FROM rollouts WHERE rollout_id = %s FOR UPDATE", (rollout_id,))
    for e in entries:
        c.execute(
            "INSERT INTO rollout_log SELECT %s, COALESCE(MAX(seq), 0) + 1, %s, %s, %s, %s, %s, %s, %s FROM rollout_log"
            " WHERE rollout_id = %s",
            (e.rollout_id, e.at, e.actor, e.event, e.from_state, e.to_state, e.reason, json.dumps(dict(e.snapshot)),
             e.rollout_id))


class RolloutTables(Database):
    def add_rollout(self, rollout: Rollout, stages: Sequence[RolloutStage], devices: Sequence[RolloutDevice],
                    entry: RolloutLogEntry) -> None:
        r = rollout
        with self._tx() as c:
            c.execute(f"INSERT INTO rollouts ({_ROLLOUT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                      (r.rollout_id, r.model, r.version, r.target, r.deployment_id, r.state, r.stage,
                       json.dumps(dict(r.spec)), r.created_at, r.updated_at, r.revision))
            _write_parts(c, stages, devices, [entry])

    def rollout(self, rollout_id: str) -> Rollout | None:
        row = self._one("SELECT * FROM rollouts WHERE rollout_id = %s", (rollout_id,))
        return records.rollout(row) if row else None

    def rollouts(self, *, limit: int = 200, states: Sequence[str] | None = None) -> list[Rollout]:
        if states is None:
            rows = self._all("SELECT * FROM rollouts ORDER BY created_at DESC, position DESC LIMIT %s", (limit,))
        else:
            rows = self._all("SELECT * FROM rollouts WHERE state = ANY(%s) ORDER BY created_at DESC, position DESC"
                             " LIMIT %s", (list(states), limit))
        return [records.rollout(r) for r in rows]

    def rollout_stages(self, rollout_id: str) -> list[RolloutStage]:
        rows = self._all("SELECT * FROM rollout_stages WHERE rollout_id = %s ORDER BY idx", (rollout_id,))
        return [records.rollout_stage(r) for r in rows]

    def rollout_devices(self, rollout_id: str) -> list[RolloutDevice]:
        rows = self._all("SELECT * FROM rollout_devices WHERE rollout_id = %s ORDER BY stage, device_id",
                         (rollout_id,))
        return [RolloutDevice(**r) for r in rows]

    def rollout_log(self, rollout_id: str) -> list[RolloutLogEntry]:
        rows = self._all("SELECT * FROM rollout_log WHERE rollout_id = %s ORDER BY seq", (rollout_id,))
        return [records.rollout_log_entry(r) for r in rows]

    def save_rollout(self, rollout: Rollout, *, stages: Sequence[RolloutStage] = (),
                     devices: Sequence[RolloutDevice] = (), entries: Sequence[RolloutLogEntry] = ()) -> bool:
        r = rollout
        with self._tx() as c:
            c.execute("UPDATE rollouts SET state = %s, stage = %s, spec = %s, updated_at = %s, revision = %s"
                      " WHERE rollout_id = %s AND revision = %s",
                      (r.state, r.stage, json.dumps(dict(r.spec)), r.updated_at, r.revision, r.rollout_id,
                       r.revision - 1))
            if c.rowcount != 1:
                return False
            _write_parts(c, stages, devices, entries)
        return True
