"""Deployments, their device rows with the per-outcome counters, and assignments.

Counters change in the transaction of the rows they count; rows are changed by
statements whose WHERE re-checks the old outcome under the row lock, so two replicas
closing the same row count it once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from fleetcast.server.store import Assignment, Deployment, DeploymentDevice
from fleetcast.server.store import rows as records
from fleetcast.server.store.postgres.database import Database

_DEPLOYMENT_COLUMNS = "deployment_id, model, version, target, status, created_at, updated_at"  # not `position`
_ROW_COLUMNS = "deployment_id, device_id, variant, sha256, state, outcome, reason, updated_at, previous"


def _count(c: psycopg.Cursor[Any], deltas: Mapping[tuple[str, str], int]) -> None:
    # Sorted: concurrent transactions take the counter rows' locks in one order.
    c.executemany(
        "INSERT INTO deployment_counts VALUES (%s, %s, %s)"
        " ON CONFLICT (deployment_id, outcome) DO UPDATE SET n = deployment_counts.n + excluded.n",
        [(d, o, n) for (d, o), n in sorted(deltas.items()) if n])


def _insert_rows(c: psycopg.Cursor[Any], devices: Sequence[DeploymentDevice]) -> None:
    added: dict[tuple[str, str], int] = {}
    for r in devices:
        added[(r.deployment_id, r.outcome)] = added.get((r.deployment_id, r.outcome), 0) + 1
    with c.copy(f"COPY deployment_devices ({_ROW_COLUMNS}) FROM STDIN") as copy:
        for r in devices:
            copy.write_row((r.deployment_id, r.device_id, r.variant, r.sha256, r.state, r.outcome, r.reason,
                            r.updated_at, json.dumps(r.previous) if r.previous is not None else None))
    _count(c, added)


class DeploymentTables(Database):
    def add_deployment(self, deployment: Deployment, devices: Sequence[DeploymentDevice]) -> None:
        d = deployment
        with self._tx() as c:
            c.execute(f"INSERT INTO deployments ({_DEPLOYMENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                      (d.deployment_id, d.model, d.version, d.target, d.status, d.created_at, d.updated_at))
            _insert_rows(c, devices)

    def add_deployment_devices(self, devices: Sequence[DeploymentDevice]) -> None:
        with self._tx() as c:
            _insert_rows(c, devices)

    def deployment(self, deployment_id: str) -> Deployment | None:
        row = self._one("SELECT * FROM deployments WHERE deployment_id = %s", (deployment_id,))
        return records.deployment(row) if row else None

    def deployments(self, *, limit: int = 200) -> list[Deployment]:
        rows = self._all("SELECT * FROM deployments ORDER BY created_at DESC, position DESC LIMIT %s", (limit,))
        return [records.deployment(r) for r in rows]

    def deployment_devices(self, deployment_id: str, *, after: str = "",
                           limit: int | None = None) -> list[DeploymentDevice]:
        rows = self._all("SELECT * FROM deployment_devices WHERE deployment_id = %s AND device_id > %s"
                         " ORDER BY device_id LIMIT %s", (deployment_id, after, limit))
        return [records.deployment_device(r) for r in rows]

    def deployment_device(self, deployment_id: str, device_id: str) -> DeploymentDevice | None:
        row = self._one("SELECT * FROM deployment_devices WHERE deployment_id = %s AND device_id = %s",
                        (deployment_id, device_id))
        return records.deployment_device(row) if row else None

    def update_deployment_device(
        self, deployment_id: str, device_id: str, *, state: str, outcome: str, reason: str, at: float
    ) -> None:
        with self._tx() as c:
            old = c.execute("SELECT outcome FROM deployment_devices WHERE deployment_id = %s AND device_id = %s"
                            " FOR UPDATE", (deployment_id, device_id)).fetchone()
            if old is None:
                return
            c.execute("UPDATE deployment_devices SET state = %s, outcome = %s, reason = %s, updated_at = %s"
                      " WHERE deployment_id = %s AND device_id = %s",
                      (state, outcome, reason, at, deployment_id, device_id))
            if old["outcome"] != outcome:
                _count(c, {(deployment_id, old["outcome"]): -1, (deployment_id, outcome): 1})

    def deployment_counts(self, deployment_id: str) -> dict[str, int]:
        rows = self._all("SELECT outcome, n FROM deployment_counts WHERE deployment_id = %s AND n != 0",
                         (deployment_id,))
        return {r["outcome"]: r["n"] for r in rows}

    def close_open_rows(self, device_ids: Sequence[str], *, outcome: str, reason: str, at: float,
                        keep: str = "") -> list[str]:
        """Closes every open row of these devices (but deployment `keep`'s) with `outcome`;
        returns the deployments touched. One statement and its counters, one transaction."""
        touched: dict[str, int] = {}
        with self._tx() as c:
            rows = c.execute(
                "UPDATE deployment_devices SET outcome = %s, reason = %s, updated_at = %s"
                " WHERE outcome = '' AND deployment_id != %s AND device_id = ANY(%s) RETURNING deployment_id",
                (outcome, reason, at, keep, list(device_ids))).fetchall()
            for r in rows:
                touched[r["deployment_id"]] = touched.get(r["deployment_id"], 0) + 1
            deltas: dict[tuple[str, str], int] = {}
            for deployment_id, n in touched.items():
                deltas[(deployment_id, "")] = -n
                deltas[(deployment_id, outcome)] = n
            _count(c, deltas)
        return sorted(touched)

    def unsigned_rows(self, *, limit: int) -> list[DeploymentDevice]:
        rows = self._all(
            "SELECT dd.* FROM deployment_devices dd JOIN deployments d ON d.deployment_id = dd.deployment_id"
            " LEFT JOIN assignments a ON a.device_id = dd.device_id"
            " WHERE dd.outcome = '' AND d.status = 'active'"
            " AND (a.deployment_id IS NULL OR a.deployment_id != dd.deployment_id)"
            " ORDER BY d.created_at, dd.position LIMIT %s", (limit,))
        return [records.deployment_device(r) for r in rows]

    def assignments_of(self, device_ids: Sequence[str]) -> dict[str, Assignment]:
        rows = self._all("SELECT * FROM assignments WHERE device_id = ANY(%s)", (list(device_ids),))
        return {r["device_id"]: Assignment(device_id=r["device_id"], deployment_id=r["deployment_id"],
                                           document=json.loads(r["document"])) for r in rows}

    def device_deployments(self, device_id: str, *, limit: int = 50) -> list[DeploymentDevice]:
        rows = self._all("SELECT * FROM deployment_devices WHERE device_id = %s ORDER BY updated_at DESC,"
                         " position DESC LIMIT %s", (device_id, limit))
        return [records.deployment_device(r) for r in rows]

    def open_rows_of(self, device_id: str) -> list[DeploymentDevice]:
        rows = self._all("SELECT * FROM deployment_devices WHERE device_id = %s AND outcome = '' ORDER BY position",
                         (device_id,))
        return [records.deployment_device(r) for r in rows]

    def set_deployment_status(self, deployment_id: str, status: str, at: float) -> None:
        with self._tx() as c:
            c.execute("UPDATE deployments SET status = %s, updated_at = %s WHERE deployment_id = %s",
                      (status, at, deployment_id))

    def assignment(self, device_id: str) -> Assignment | None:
        row = self._one("SELECT * FROM assignments WHERE device_id = %s", (device_id,))
        if row is None:
            return None
        return Assignment(device_id=device_id, deployment_id=row["deployment_id"], document=json.loads(row["document"]))

    def set_assignment(self, device_id: str, assignment: Assignment | None) -> None:
        if assignment is not None:
            self.set_assignments([assignment])
            return
        with self._tx() as c:
            c.execute("DELETE FROM assignments WHERE device_id = %s", (device_id,))

    def set_assignments(self, assignments: Sequence[Assignment]) -> None:
        with self._tx() as c:
            c.executemany("INSERT INTO assignments VALUES (%s, %s, %s) ON CONFLICT (device_id) DO UPDATE SET"
                          " deployment_id = excluded.deployment_id, document = excluded.document",
                          [(a.device_id, a.deployment_id, json.dumps(dict(a.document))) for a in assignments])
