"""Signed metadata, artifacts, versions, variants, version reservations and variant pins."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import psycopg

from fleetcast.server.store import Artifact, Golden, ModelVersion, Variant
from fleetcast.server.store import rows as records
from fleetcast.server.store.postgres.database import Database

# A reservation older than this is from an upload that died with its replica: replicas
# share the table, so opening a store drops only these, not another replica's live ones.
STALE_RESERVATION_S = 6 * 3600.0


class ModelTables(Database):
    # -- signing's MetadataStore ------------------------------------------------------
    def get_metadata(self, repository: str, name: str) -> bytes | None:
        row = self._one("SELECT data FROM metadata WHERE repository = %s AND name = %s", (repository, name))
        return bytes(row["data"]) if row else None

    def put_metadata(self, repository: str, name: str, data: bytes) -> None:
        role, version = records.metadata_role(name)
        with self._tx() as c:
            c.execute("INSERT INTO metadata (repository, name, data, role, version, written_at)"
                      " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (repository, name) DO UPDATE SET"
                      " data = excluded.data, written_at = excluded.written_at",
                      (repository, name, bytes(data), role, version, time.time()))
            self._notify(c, "metadata", f"{repository}\n{name}")   # delivered when this commits

    def prune_metadata(self, *, superseded_before: float) -> int:
        # Versioned files never change, so no notice: a replica's cached copy stays right.
        with self._tx() as c:
            return c.execute(records.PRUNE_METADATA_SQL.format(cutoff="%s"), (superseded_before,)).rowcount

    # -- artifacts and versions -------------------------------------------------------
    def add_artifact(self, artifact: Artifact) -> None:
        a = artifact
        with self._tx() as c:
            c.execute("INSERT INTO artifacts VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (sha256) DO UPDATE SET"
                      " length = excluded.length, kind = excluded.kind, model = excluded.model,"
                      " version = excluded.version, variant = excluded.variant, format = excluded.format",
                      (a.sha256, a.length, a.kind, a.model, a.version, a.variant, a.format))

    def artifact(self, sha256: str) -> Artifact | None:
        row = self._one("SELECT * FROM artifacts WHERE sha256 = %s", (sha256,))
        return Artifact(**row) if row else None

    def drop_stale_reservations(self, *, before: float) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM version_reservations WHERE reserved_at < %s", (before,))

    def reserve_version(self, model: str, version: str | None, *, at: float) -> str | None:
        with self._tx() as c:
            self._lock(c, f"versions:{model}")   # the read below and the insert are one step
            if version is None:
                row = c.execute(
                    "SELECT COALESCE(MAX(version::numeric), 0) + 1 AS next FROM ("
                    " SELECT version FROM versions WHERE model = %s"
                    " UNION ALL SELECT version FROM version_reservations WHERE model = %s) AS taken"
                    " WHERE version ~ '^[0-9]+$'", (model, model)).fetchone()
                version = str(row["next"])
            elif c.execute("SELECT 1 FROM versions WHERE model = %s AND version = %s", (model, version)).fetchone():
                return None
            c.execute("INSERT INTO version_reservations VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                      (model, version, at))
            return version if c.rowcount == 1 else None

    def release_version(self, model: str, version: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM version_reservations WHERE model = %s AND version = %s", (model, version))

    def add_version(self, version: ModelVersion) -> None:
        g = version.golden
        with self._tx() as c:
            self._lock(c, f"versions:{version.model}")   # seq: the next number, once
            c.execute("DELETE FROM version_reservations WHERE model = %s AND version = %s",
                      (version.model, version.version))
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM versions WHERE model = %s",
                            (version.model,)).fetchone()["seq"]
            c.execute(
                "INSERT INTO versions (model, version, seq, created_at, inputs, outputs, golden_sha256,"
                " golden_length, atol, rtol, compression) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (version.model, version.version, seq, version.created_at, json.dumps(version.inputs),
                 json.dumps(version.outputs), g.sha256 if g else None, g.length if g else None,
                 g.atol if g else None, g.rtol if g else None,
                 None if version.compression is None else json.dumps(dict(version.compression))))
            for v in version.variants:
                _insert_variant(c, version.model, version.version, v)

    def add_variant(self, model: str, version: str, variant: Variant) -> None:
        with self._tx() as c:
            _insert_variant(c, model, version, variant)

    def set_compression(self, model: str, version: str, compression: Mapping[str, Any]) -> None:
        with self._tx() as c:
            c.execute("UPDATE versions SET compression = %s WHERE model = %s AND version = %s",
                      (json.dumps(dict(compression)), model, version))

    def _version(self, row: Mapping[str, Any]) -> ModelVersion:
        variants = [
            Variant(variant=r["variant"], format=r["format"], sha256=r["sha256"], length=r["length"],
                    metrics=json.loads(r["metrics"]), golden=Golden(**json.loads(r["golden"])) if r["golden"] else None)
            for r in self._all("SELECT * FROM variants WHERE model = %s AND version = %s ORDER BY position",
                               (row["model"], row["version"]))
        ]
        golden = (Golden(sha256=row["golden_sha256"], length=row["golden_length"], atol=row["atol"], rtol=row["rtol"])
                  if row["golden_sha256"] else None)
        return ModelVersion(
            model=row["model"], version=row["version"], created_at=row["created_at"],
            inputs=json.loads(row["inputs"]), outputs=json.loads(row["outputs"]), golden=golden,
            variants=tuple(variants), compression=json.loads(row["compression"]) if row["compression"] else None,
        )

    def version(self, model: str, version: str) -> ModelVersion | None:
        row = self._one("SELECT * FROM versions WHERE model = %s AND version = %s", (model, version))
        return self._version(row) if row else None

    def latest_version(self, model: str) -> ModelVersion | None:
        row = self._one("SELECT * FROM versions WHERE model = %s ORDER BY seq DESC LIMIT 1", (model,))
        return self._version(row) if row else None

    def versions(self, model: str) -> list[ModelVersion]:
        return [self._version(r) for r in self._all("SELECT * FROM versions WHERE model = %s ORDER BY seq", (model,))]

    def models(self) -> list[tuple[str, str, int]]:
        rows = self._all(
            "SELECT model, COUNT(*) AS n, (SELECT v.version FROM versions v WHERE v.model = versions.model"
            " ORDER BY v.seq DESC LIMIT 1) AS latest FROM versions GROUP BY model ORDER BY model")
        return [(r["model"], r["latest"], r["n"]) for r in rows]

    # -- variant pins -----------------------------------------------------------------
    def pins(self, model: str) -> dict[str, str]:
        rows = self._all("SELECT scope, variant FROM variant_pins WHERE model = %s", (model,))
        return {r["scope"]: r["variant"] for r in rows}

    def set_pin(self, model: str, scope: str, variant: str | None) -> None:
        with self._tx() as c:
            if variant is None:
                c.execute("DELETE FROM variant_pins WHERE model = %s AND scope = %s", (model, scope))
            else:
                c.execute("INSERT INTO variant_pins VALUES (%s, %s, %s)"
                          " ON CONFLICT (model, scope) DO UPDATE SET variant = excluded.variant", (model, scope, variant))


def _insert_variant(c: psycopg.Cursor[Any], model: str, version: str, v: Variant) -> None:
    golden = None if v.golden is None else json.dumps(asdict(v.golden))
    c.execute(
        "INSERT INTO variants (model, version, variant, format, sha256, length, metrics, golden)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (model, version, variant) DO UPDATE SET"
        " format = excluded.format, sha256 = excluded.sha256, length = excluded.length,"
        " metrics = excluded.metrics, golden = excluded.golden,"
        " position = nextval(pg_get_serial_sequence('variants', 'position'))",   # replaced: last, as in SQLite
        (model, version, v.variant, v.format, v.sha256, v.length, json.dumps(dict(v.metrics)), golden))
