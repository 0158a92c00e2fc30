"""Devices (the dashboard's pages and tally included), their identities (ADR 0005) and the
operator's enroll tokens."""

from __future__ import annotations

import json
from collections.abc import Sequence

from fleetcast.server.store import (
    Device,
    DeviceIdentity,
    DevicePage,
    DeviceProfile,
    DeviceQuery,
    DeviceTally,
    EnrollToken,
)
from fleetcast.server.store import rows as records
from fleetcast.server.store.pages import device_filter, device_order
from fleetcast.server.store.postgres.database import Database


class DeviceTables(Database):
    def put_device(self, device: Device) -> None:
        d = device
        with self._tx() as c:
            c.execute(
                "INSERT INTO devices (device_id, token_sha256, hardware_class, backends, grp, labels, agent_version,"
                " enrolled_at, last_seen, active_model, state, deployment_id)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (device_id) DO UPDATE SET token_sha256 = excluded.token_sha256,"
                " hardware_class = excluded.hardware_class, backends = excluded.backends, grp = excluded.grp,"
                " labels = excluded.labels, agent_version = excluded.agent_version, last_seen = excluded.last_seen",
                (d.device_id, d.token_sha256, d.hardware_class, json.dumps(list(d.backends)), d.group,
                 json.dumps(dict(d.labels)), d.agent_version, d.enrolled_at, d.last_seen, d.active_model, d.state,
                 d.deployment_id))

    def device(self, device_id: str) -> Device | None:
        row = self._one("SELECT * FROM devices WHERE device_id = %s", (device_id,))
        return records.device(row) if row else None

    def device_by_token(self, token_sha256: str) -> Device | None:
        row = self._one("SELECT * FROM devices WHERE token_sha256 = %s", (token_sha256,))
        return records.device(row) if row else None

    def devices(self, *, group: str | None = None, after: str = "", limit: int | None = None) -> list[Device]:
        where, params = ("device_id > %s", [after]) if group is None else ("grp = %s AND device_id > %s", [group, after])
        return [records.device(r) for r in self._all(
            f"SELECT * FROM devices WHERE {where} ORDER BY device_id LIMIT %s", (*params, limit))]

    def device_profiles(self, *, group: str | None = None) -> list[DeviceProfile]:
        sql = "SELECT device_id, hardware_class, backends, grp FROM devices"
        rows = self._all(sql + " ORDER BY device_id") if group is None else \
            self._all(sql + " WHERE grp = %s ORDER BY device_id", (group,))
        return [DeviceProfile(r["device_id"], r["hardware_class"], tuple(json.loads(r["backends"])), r["grp"])
                for r in rows]

    def record_report(self, device_id: str, *, at: float, state: str, active_model: str, deployment_id: str,
                      error: str = "") -> None:
        with self._tx() as c:
            c.execute("UPDATE devices SET last_seen = %s, state = %s, active_model = %s, deployment_id = %s"
                      " WHERE device_id = %s", (at, state, active_model, deployment_id, device_id))
            if error:
                c.execute("UPDATE devices SET last_error = %s, last_error_at = %s WHERE device_id = %s",
                          (error, at, device_id))

    def touch_device(self, device_id: str, at: float) -> None:
        with self._tx() as c:
            c.execute("UPDATE devices SET last_seen = %s WHERE device_id = %s", (at, device_id))

    def touch_devices(self, device_ids: Sequence[str], at: float) -> None:
        with self._tx() as c:
            c.execute("UPDATE devices SET last_seen = %s WHERE device_id = ANY(%s)", (at, sorted(set(device_ids))))

    def find_devices(self, query: DeviceQuery) -> DevicePage:
        where, params = device_filter(query, mark="%s")
        with self._tx() as c:   # one transaction: the count and the page see one snapshot
            c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            total = c.execute(f"SELECT COUNT(*) AS n FROM devices{where}", params).fetchone()["n"]
            rows = c.execute(f"SELECT * FROM devices{where} ORDER BY {device_order(query)} LIMIT %s OFFSET %s",
                             [*params, query.limit, query.offset]).fetchall()
        return DevicePage(devices=[records.device(r) for r in rows], total=total)

    def device_tally(self, *, online_since: float, late_since: float) -> list[DeviceTally]:
        rows = self._all(
            "SELECT hardware_class, active_model, CASE WHEN last_seen >= %s THEN 'online'"
            " WHEN last_seen >= %s THEN 'late' ELSE 'offline' END AS live, COUNT(*) AS n"
            " FROM devices GROUP BY hardware_class, active_model, live ORDER BY hardware_class, active_model, live",
            (online_since, late_since))
        return [DeviceTally(r["hardware_class"], r["active_model"], r["live"], r["n"]) for r in rows]

    # -- identity -----------------------------------------------------------------------
    def device_identity(self, device_id: str) -> DeviceIdentity | None:
        row = self._one("SELECT * FROM device_identities WHERE device_id = %s", (device_id,))
        return DeviceIdentity(**row) if row else None

    def put_device_identity(self, identity: DeviceIdentity) -> None:
        i = identity
        with self._tx() as c:
            c.execute("INSERT INTO device_identities VALUES (%s, %s, %s, %s, %s) ON CONFLICT (device_id) DO UPDATE"
                      " SET public_key_pem = excluded.public_key_pem, certificate_sha256 = excluded.certificate_sha256,"
                      " issued_at = excluded.issued_at, reprovision_approved_at = excluded.reprovision_approved_at",
                      (i.device_id, i.public_key_pem, i.certificate_sha256, i.issued_at, i.reprovision_approved_at))

    def add_enroll_token(self, token: EnrollToken) -> None:
        t = token
        with self._tx() as c:
            c.execute("INSERT INTO enroll_tokens VALUES (%s, %s, %s, %s, %s, %s)",
                      (t.token_sha256, t.name, t.group, t.created_at, t.expires_at, t.uses_left))

    def use_enroll_token(self, token_sha256: str, at: float) -> EnrollToken | None:
        # One statement: the row lock makes check-and-take atomic across replicas.
        row = self._one(
            "UPDATE enroll_tokens SET uses_left = uses_left - 1 WHERE token_sha256 = %s"
            " AND (expires_at IS NULL OR expires_at > %s) AND (uses_left IS NULL OR uses_left > 0)"
            " RETURNING *", (token_sha256, at))
        return records.enroll_token(row) if row else None

    def enroll_tokens(self) -> list[EnrollToken]:
        return [records.enroll_token(r) for r in self._all("SELECT * FROM enroll_tokens ORDER BY created_at")]
