"""The embedded store: one SQLite file, one connection, one lock.

`exclusive` is a flock on the file beside the database (`<db>.lock`), so two stores on
one file exclude each other as two processes would; every name shares that one lock.

Migrations are an ordered list of named functions; each name is recorded in the
`migrations` table when applied, and names are never renamed or reused.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final, TypeVar

import sqlite_utils

from fleetcast.server.store import rows as records
from fleetcast.server.store import (
    Aggregate,
    Artifact,
    Assignment,
    Deployment,
    DeploymentDevice,
    Device,
    DeviceIdentity,
    DevicePage,
    DeviceProfile,
    DeviceQuery,
    DeviceTally,
    EnrollToken,
    FleetAggregate,
    Golden,
    ModelVersion,
    Rollout,
    RolloutDevice,
    RolloutLogEntry,
    RolloutStage,
    StatsRow,
    SeriesRow,
    TelemetryBatch,
    Variant,
    WindowRow,
    WINDOW_S,
)
from fleetcast.server.store.pages import device_filter, device_order
from fleetcast.server.store import sqlite_telemetry as telemetry_tables

logger = logging.getLogger(__name__)

T = TypeVar("T")


def create_metadata(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE metadata (repository TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL,"
        " PRIMARY KEY (repository, name))"
    )


def create_models(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE artifacts (sha256 TEXT PRIMARY KEY, length INTEGER NOT NULL, kind TEXT NOT NULL,"
        " model TEXT NOT NULL, version TEXT NOT NULL, variant TEXT NOT NULL, format TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE versions (model TEXT NOT NULL, version TEXT NOT NULL, seq INTEGER NOT NULL,"
        " created_at REAL NOT NULL, inputs TEXT NOT NULL, outputs TEXT NOT NULL,"
        " golden_sha256 TEXT, golden_length INTEGER, atol REAL, rtol REAL,"
        " PRIMARY KEY (model, version))"
    )
    db.execute(
        "CREATE TABLE variants (model TEXT NOT NULL, version TEXT NOT NULL, variant TEXT NOT NULL,"
        " format TEXT NOT NULL, sha256 TEXT NOT NULL, length INTEGER NOT NULL, metrics TEXT NOT NULL,"
        " PRIMARY KEY (model, version, variant))"
    )


def create_devices(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE devices (device_id TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE,"
        " hardware_class TEXT NOT NULL, backends TEXT NOT NULL, grp TEXT NOT NULL, labels TEXT NOT NULL,"
        " agent_version TEXT NOT NULL, enrolled_at REAL NOT NULL, last_seen REAL,"
        " active_model TEXT NOT NULL DEFAULT '', state TEXT NOT NULL DEFAULT '',"
        " deployment_id TEXT NOT NULL DEFAULT '')"
    )
    db.execute("CREATE INDEX devices_grp ON devices (grp)")


def create_deployments(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE deployments (deployment_id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL,"
        " target TEXT NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE deployment_devices (deployment_id TEXT NOT NULL, device_id TEXT NOT NULL,"
        " variant TEXT NOT NULL, sha256 TEXT NOT NULL, state TEXT NOT NULL, outcome TEXT NOT NULL,"
        " reason TEXT NOT NULL, updated_at REAL NOT NULL, previous TEXT,"
        " PRIMARY KEY (deployment_id, device_id))"
    )
    db.execute("CREATE INDEX deployment_devices_device ON deployment_devices (device_id, outcome)")
    db.execute(
        "CREATE TABLE assignments (device_id TEXT PRIMARY KEY, deployment_id TEXT NOT NULL, document TEXT NOT NULL)"
    )


def create_telemetry(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE telemetry_batches (device_id TEXT NOT NULL, batch_id TEXT NOT NULL,"
        " received_at REAL NOT NULL, PRIMARY KEY (device_id, batch_id))"
    )
    db.execute(
        "CREATE TABLE telemetry_aggregates (device_id TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL,"
        " variant TEXT NOT NULL, inferences INTEGER NOT NULL, errors INTEGER NOT NULL,"
        " latency_sum_ms REAL NOT NULL, histogram TEXT NOT NULL, updated_at REAL NOT NULL,"
        " PRIMARY KEY (device_id, model, version, variant))"
    )


def add_device_last_error(db: sqlite_utils.Database) -> None:
    # The latest failure a device reported, even for a deployment already closed (a
    # refused replay of old metadata, say): operators see it on the device.
    db.execute("ALTER TABLE devices ADD COLUMN last_error TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE devices ADD COLUMN last_error_at REAL")


def add_compression_and_variant_golden(db: sqlite_utils.Database) -> None:
    # A version's compression job status (JSON, NULL without --compress) and each
    # variant's own golden reference (JSON {sha256, length, atol, rtol}, NULL: the version's).
    db.execute("ALTER TABLE versions ADD COLUMN compression TEXT")
    db.execute("ALTER TABLE variants ADD COLUMN golden TEXT")


def create_device_identities(db: sqlite_utils.Database) -> None:
    # ADR 0005: the public key each device enrolled with, and the operator's approval
    # of a re-provisioning; enroll tokens the operator made (hashed).
    db.execute(
        "CREATE TABLE device_identities (device_id TEXT PRIMARY KEY, public_key_pem TEXT NOT NULL,"
        " certificate_sha256 TEXT NOT NULL, issued_at REAL NOT NULL, reprovision_approved_at REAL)"
    )
    db.execute(
        "CREATE TABLE enroll_tokens (token_sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, grp TEXT NOT NULL,"
        " created_at REAL NOT NULL, expires_at REAL, uses_left INTEGER)"
    )


def create_version_reservations(db: sqlite_utils.Database) -> None:
    # Names taken by uploads still being checked and signed: allocation is one INSERT in a
    # transaction, so concurrent uploads (or processes) never get the same version.
    db.execute(
        "CREATE TABLE version_reservations (model TEXT NOT NULL, version TEXT NOT NULL, reserved_at REAL NOT NULL,"
        " PRIMARY KEY (model, version))"
    )


def create_variant_pins(db: sqlite_utils.Database) -> None:
    # An operator's pin: devices of `scope` ("group:G" or "hardware:CLASS") get `variant`
    # of every version of `model` that has it (fleetcast.server.choice).
    db.execute("CREATE TABLE variant_pins (model TEXT NOT NULL, scope TEXT NOT NULL, variant TEXT NOT NULL,"
               " PRIMARY KEY (model, scope))")


def add_deployment_counts(db: sqlite_utils.Database) -> None:
    # Devices per (deployment, outcome), '' for those still pending: updated in the same
    # transaction as each device row, so a status report never scans the deployment.
    db.execute(
        "CREATE TABLE deployment_counts (deployment_id TEXT NOT NULL, outcome TEXT NOT NULL, n INTEGER NOT NULL,"
        " PRIMARY KEY (deployment_id, outcome))"
    )
    db.execute(
        "INSERT INTO deployment_counts SELECT deployment_id, outcome, COUNT(*) FROM deployment_devices"
        " GROUP BY deployment_id, outcome"
    )
    db.execute("CREATE INDEX deployment_devices_open ON deployment_devices (outcome, deployment_id)")


def add_device_table_indexes(db: sqlite_utils.Database) -> None:
    # The dashboard's device table sorts and filters 10,000s of devices in SQL.
    db.execute("CREATE INDEX devices_last_seen ON devices (last_seen)")
    db.execute("CREATE INDEX devices_hardware ON devices (hardware_class, device_id)")
    db.execute("CREATE INDEX devices_active_model ON devices (active_model, device_id)")


def create_telemetry_windows(db: sqlite_utils.Database) -> None:
    # Per device per minute (rollout gates, a device's page) and per cohort per minute
    # (the fleet's plots): see WINDOW_S in fleetcast.server.store.
    db.execute(
        "CREATE TABLE telemetry_windows (model TEXT NOT NULL, minute INTEGER NOT NULL, device_id TEXT NOT NULL,"
        " version TEXT NOT NULL, variant TEXT NOT NULL, backend TEXT NOT NULL, inferences INTEGER NOT NULL,"
        " errors INTEGER NOT NULL, latency_sum_ms REAL NOT NULL, histogram TEXT NOT NULL,"
        " PRIMARY KEY (model, minute, device_id, version, variant, backend))"
    )
    db.execute(
        "CREATE TABLE telemetry_series (model TEXT NOT NULL, minute INTEGER NOT NULL, version TEXT NOT NULL,"
        " variant TEXT NOT NULL, hardware_class TEXT NOT NULL, backend TEXT NOT NULL,"
        " inferences INTEGER NOT NULL, errors INTEGER NOT NULL, latency_sum_ms REAL NOT NULL,"
        " histogram TEXT NOT NULL, PRIMARY KEY (model, minute, version, variant, hardware_class, backend))"
    )


def create_rollouts(db: sqlite_utils.Database) -> None:
    # Staged rollouts (fleetcast.server.rollouts): the rollout, its stages, the state of each
    # device it plans for, and an append-only log. `revision` guards every save.
    db.execute(
        "CREATE TABLE rollouts (rollout_id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL,"
        " target TEXT NOT NULL, deployment_id TEXT NOT NULL, state TEXT NOT NULL, stage INTEGER NOT NULL,"
        " spec TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, revision INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX rollouts_state ON rollouts (state)")
    db.execute(
        "CREATE TABLE rollout_stages (rollout_id TEXT NOT NULL, idx INTEGER NOT NULL, size TEXT NOT NULL,"
        " state TEXT NOT NULL, started_at REAL, soak_started_at REAL, ended_at REAL, results TEXT NOT NULL,"
        " PRIMARY KEY (rollout_id, idx))"
    )
    db.execute(
        "CREATE TABLE rollout_devices (rollout_id TEXT NOT NULL, device_id TEXT NOT NULL, stage INTEGER NOT NULL,"
        " cohort TEXT NOT NULL, variant TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL,"
        " assigned_at REAL, updated_at REAL NOT NULL, PRIMARY KEY (rollout_id, device_id))"
    )
    db.execute(
        "CREATE TABLE rollout_log (rollout_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL,"
        " actor TEXT NOT NULL, event TEXT NOT NULL, from_state TEXT NOT NULL, to_state TEXT NOT NULL,"
        " reason TEXT NOT NULL, snapshot TEXT NOT NULL, PRIMARY KEY (rollout_id, seq))"
    )


def create_telemetry_fleet(db: sqlite_utils.Database) -> None:
    # The cumulative aggregates summed per hardware class, kept at ingest in the same
    # transaction (what /metrics exports, read in a few rows however large the fleet);
    # filled here from the aggregates already stored, whose back end was not recorded ("").
    db.execute(
        "CREATE TABLE telemetry_fleet (model TEXT NOT NULL, version TEXT NOT NULL, variant TEXT NOT NULL,"
        " hardware_class TEXT NOT NULL, backend TEXT NOT NULL, inferences INTEGER NOT NULL, errors INTEGER NOT NULL,"
        " latency_sum_ms REAL NOT NULL, histogram TEXT NOT NULL,"
        " PRIMARY KEY (model, version, variant, hardware_class, backend))"
    )
    telemetry_tables.fill_fleet_from_aggregates(db.conn)


def histograms_in_bucket_columns(db: sqlite_utils.Database) -> None:
    # ADR 0009: the four telemetry tables keep one column per histogram bucket (h0..h66)
    # instead of a JSON array, so a flush adds to them in SQL; every row converted as is.
    for table in telemetry_tables.TABLES:
        telemetry_tables.convert_from_json(db.conn, table)


def fold_windows_into_aggregates(db: sqlite_utils.Database) -> None:
    # ADR 0009: the aggregates are written once a minute from the device windows, not at
    # every flush; every window stored until now is counted in them already.
    telemetry_tables.create_fold(db.conn)


def add_metadata_roles(db: sqlite_utils.Database) -> None:
    """Each replaceable metadata file's role, version and write time, so superseded ones can
    be pruned; files written before this count as written now."""
    for column, kind in (("role", "TEXT"), ("version", "INTEGER"), ("written_at", "REAL")):
        db.execute(f"ALTER TABLE metadata ADD COLUMN {column} {kind}")
    now = time.time()
    names = db.execute("SELECT repository, name FROM metadata").fetchall()
    db.conn.executemany("UPDATE metadata SET role = ?, version = ?, written_at = ? WHERE repository = ? AND name = ?",
                        [(*records.metadata_role(name), now, repository, name) for repository, name in names])
    db.execute("CREATE INDEX metadata_roles ON metadata (repository, role, version)")


# Applied in order; names are recorded and never change.
MIGRATIONS: Final[list[Callable[[sqlite_utils.Database], None]]] = [
    create_metadata,
    create_models,
    create_devices,
    create_deployments,
    create_telemetry,
    add_compression_and_variant_golden,
    add_device_last_error,
    create_device_identities,
    create_version_reservations,
    create_variant_pins,
    add_deployment_counts,
    create_telemetry_windows,
    create_rollouts,
    add_device_table_indexes,
    create_telemetry_fleet,
    histograms_in_bucket_columns,
    fold_windows_into_aggregates,
    add_metadata_roles,
]


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Applies the migrations not yet recorded; returns the names applied now."""
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {row[0] for row in db.execute("SELECT name FROM migrations").fetchall()}
    applied: list[str] = []
    for step in MIGRATIONS:
        if step.__name__ in done:
            continue
        with db.conn:
            step(db)
            db.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", [step.__name__, time.time()])
        applied.append(step.__name__)
        logger.info("migration applied name=%s", step.__name__)
    return applied


def _count(c: sqlite3.Connection, deployment_id: str, outcome: str, delta: int) -> None:
    c.execute(
        "INSERT INTO deployment_counts VALUES (?, ?, ?)"
        " ON CONFLICT (deployment_id, outcome) DO UPDATE SET n = n + excluded.n",
        (deployment_id, outcome, delta),
    )


def _insert_deployment_devices(c: sqlite3.Connection, devices: Sequence[DeploymentDevice]) -> None:
    added: dict[tuple[str, str], int] = {}
    for r in devices:
        added[(r.deployment_id, r.outcome)] = added.get((r.deployment_id, r.outcome), 0) + 1
    for (deployment_id, outcome), n in added.items():
        _count(c, deployment_id, outcome, n)
    c.executemany(
        "INSERT INTO deployment_devices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (r.deployment_id, r.device_id, r.variant, r.sha256, r.state, r.outcome, r.reason, r.updated_at,
             json.dumps(r.previous) if r.previous is not None else None)
            for r in devices
        ],
    )


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _write_rollout_parts(c: sqlite3.Connection, stages: Sequence[RolloutStage], devices: Sequence[RolloutDevice],
                         entries: Sequence[RolloutLogEntry]) -> None:
    """Upserts the stages and devices and appends the log entries (SQL PostgreSQL runs too)."""
    c.executemany(
        "INSERT INTO rollout_stages VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rollout_id, idx) DO UPDATE SET"
        " size = excluded.size, state = excluded.state, started_at = excluded.started_at,"
        " soak_started_at = excluded.soak_started_at, ended_at = excluded.ended_at, results = excluded.results",
        [(x.rollout_id, x.index, x.size, x.state, x.started_at, x.soak_started_at, x.ended_at,
          json.dumps(list(x.results))) for x in stages])
    c.executemany(
        "INSERT INTO rollout_devices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rollout_id, device_id) DO UPDATE"
        " SET stage = excluded.stage, cohort = excluded.cohort, variant = excluded.variant, state = excluded.state,"
        " reason = excluded.reason, assigned_at = excluded.assigned_at, updated_at = excluded.updated_at",
        [(d.rollout_id, d.device_id, d.stage, d.cohort, d.variant, d.state, d.reason, d.assigned_at, d.updated_at)
         for d in devices])
    for e in entries:
        c.execute(
            "INSERT INTO rollout_log SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ?, ?, ?, ? FROM rollout_log"
            " WHERE rollout_id = ?",
            (e.rollout_id, e.at, e.actor, e.event, e.from_state, e.to_state, e.reason, json.dumps(dict(e.snapshot)),
             e.rollout_id))


def _stored_batches(c: sqlite3.Connection, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (device, batch id) pairs are stored already: one read per 200, not one insert per batch."""
    found: set[tuple[str, str]] = set()
    for chunk in _chunks(list(dict.fromkeys(keys)), 200):
        values = ",".join("(?, ?)" for _ in chunk)
        found.update((d, b) for d, b in c.execute(
            f"SELECT device_id, batch_id FROM telemetry_batches WHERE (device_id, batch_id) IN (VALUES {values})",
            [x for key in chunk for x in key]))
    return found


class SqliteStore:
    """`Store` on one SQLite file. Safe to call from several threads (one lock)."""

    def __init__(self, path: Path) -> None:
        conn = sqlite3.connect(str(path), check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on the disk before the call returns, so what the server
        # acknowledged (a status report, a telemetry batch) survives a power loss too,
        # not only a crash of the process (NORMAL in WAL mode may lose the last commits).
        # One fsync per transaction; telemetry commits a whole flush in one.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA temp_store=MEMORY")   # a flush's staged rows (sqlite_telemetry)
        self._conn = conn
        self._db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._lock_path = Path(f"{path}.lock")
        self._gate = threading.RLock()        # this store's threads queue here, then on the flock
        self._holder: int | None = None
        with self._lock:
            migrate(self._db)
            # One server per data dir (its lock): a reservation left now is from a crashed upload.
            with conn:
                conn.execute("DELETE FROM version_reservations")
        for suffix in ("", "-wal", "-shm", ".lock"):
            try:
                os.chmod(f"{path}{suffix}", 0o600)   # the umask must not make the database readable
            except FileNotFoundError:
                pass

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._conn:
            yield self._conn

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        with self._gate:
            if self._holder == threading.get_ident():   # re-entered by the holder
                yield
                return
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._holder = threading.get_ident()
                try:
                    yield
                finally:
                    self._holder = None
            finally:
                os.close(fd)   # closing releases the flock

    def announce(self, topic: str, *details: str) -> None:
        """Nothing to tell: one server process serves a SQLite file."""

    def subscribe(self, listener: Callable[[str, str], None]) -> None:
        """Never called: no other server process writes this file."""

    def applied_migrations(self) -> list[str]:
        return [r[0] for r in self._all("SELECT name FROM migrations ORDER BY rowid")]

    # -- signing's MetadataStore ------------------------------------------------------
    def get_metadata(self, repository: str, name: str) -> bytes | None:
        row = self._one("SELECT data FROM metadata WHERE repository = ? AND name = ?", (repository, name))
        return bytes(row[0]) if row else None

    def put_metadata(self, repository: str, name: str, data: bytes) -> None:
        role, version = records.metadata_role(name)
        with self._tx() as c:
            c.execute(
                "INSERT INTO metadata (repository, name, data, role, version, written_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (repository, name) DO UPDATE SET data = excluded.data, written_at = excluded.written_at",
                (repository, name, bytes(data), role, version, time.time()),
            )

    def prune_metadata(self, *, superseded_before: float) -> int:
        with self._tx() as c:
            return c.execute(records.PRUNE_METADATA_SQL.format(cutoff="?"), (superseded_before,)).rowcount

    # -- models -------------------------------------------------------------------------
    def add_artifact(self, artifact: Artifact) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?)",
                (artifact.sha256, artifact.length, artifact.kind, artifact.model, artifact.version,
                 artifact.variant, artifact.format),
            )

    def artifact(self, sha256: str) -> Artifact | None:
        row = self._one("SELECT * FROM artifacts WHERE sha256 = ?", (sha256,))
        return Artifact(**{k: row[k] for k in row.keys()}) if row else None

    def reserve_version(self, model: str, version: str | None, *, at: float) -> str | None:
        with self._tx() as c:
            c.execute("BEGIN IMMEDIATE")   # the write lock first: the read below and the insert are one step
            if version is None:
                row = c.execute(
                    "SELECT COALESCE(MAX(CAST(version AS INTEGER)), 0) + 1 FROM ("
                    " SELECT version FROM versions WHERE model = ?"
                    " UNION ALL SELECT version FROM version_reservations WHERE model = ?)"
                    " WHERE version NOT GLOB '*[^0-9]*' AND version != ''", (model, model),
                ).fetchone()
                version = str(row[0])
            elif c.execute("SELECT 1 FROM versions WHERE model = ? AND version = ?", (model, version)).fetchone():
                return None
            cur = c.execute("INSERT OR IGNORE INTO version_reservations VALUES (?, ?, ?)", (model, version, at))
            return version if cur.rowcount == 1 else None

    def release_version(self, model: str, version: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM version_reservations WHERE model = ? AND version = ?", (model, version))

    def add_version(self, version: ModelVersion) -> None:
        g = version.golden
        with self._tx() as c:
            c.execute("DELETE FROM version_reservations WHERE model = ? AND version = ?",
                      (version.model, version.version))
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM versions WHERE model = ?", (version.model,)).fetchone()[0]
            c.execute(
                "INSERT INTO versions (model, version, seq, created_at, inputs, outputs, golden_sha256,"
                " golden_length, atol, rtol, compression) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (version.model, version.version, seq, version.created_at, json.dumps(version.inputs),
                 json.dumps(version.outputs), g.sha256 if g else None, g.length if g else None,
                 g.atol if g else None, g.rtol if g else None,
                 None if version.compression is None else json.dumps(dict(version.compression))),
            )
            for v in version.variants:
                self._insert_variant(c, version.model, version.version, v)

    @staticmethod
    def _insert_variant(c: sqlite3.Connection, model: str, version: str, v: Variant) -> None:
        golden = None if v.golden is None else json.dumps(asdict(v.golden))
        c.execute(
            "INSERT OR REPLACE INTO variants (model, version, variant, format, sha256, length, metrics, golden)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (model, version, v.variant, v.format, v.sha256, v.length, json.dumps(dict(v.metrics)), golden),
        )

    def add_variant(self, model: str, version: str, variant: Variant) -> None:
        with self._tx() as c:
            self._insert_variant(c, model, version, variant)

    def set_compression(self, model: str, version: str, compression: Mapping[str, Any]) -> None:
        with self._tx() as c:
            c.execute("UPDATE versions SET compression = ? WHERE model = ? AND version = ?",
                      (json.dumps(dict(compression)), model, version))

    def _version(self, row: sqlite3.Row) -> ModelVersion:
        variants = [
            Variant(variant=r["variant"], format=r["format"], sha256=r["sha256"], length=r["length"],
                    metrics=json.loads(r["metrics"]), golden=Golden(**json.loads(r["golden"])) if r["golden"] else None)
            for r in self._all(
                "SELECT * FROM variants WHERE model = ? AND version = ? ORDER BY rowid", (row["model"], row["version"])
            )
        ]
        golden = (
            Golden(sha256=row["golden_sha256"], length=row["golden_length"], atol=row["atol"], rtol=row["rtol"])
            if row["golden_sha256"] else None
        )
        return ModelVersion(
            model=row["model"], version=row["version"], created_at=row["created_at"],
            inputs=json.loads(row["inputs"]), outputs=json.loads(row["outputs"]), golden=golden,
            variants=tuple(variants), compression=json.loads(row["compression"]) if row["compression"] else None,
        )

    def version(self, model: str, version: str) -> ModelVersion | None:
        row = self._one("SELECT * FROM versions WHERE model = ? AND version = ?", (model, version))
        return self._version(row) if row else None

    def latest_version(self, model: str) -> ModelVersion | None:
        row = self._one("SELECT * FROM versions WHERE model = ? ORDER BY seq DESC LIMIT 1", (model,))
        return self._version(row) if row else None

    def versions(self, model: str) -> list[ModelVersion]:
        return [self._version(r) for r in self._all("SELECT * FROM versions WHERE model = ? ORDER BY seq", (model,))]

    def models(self) -> list[tuple[str, str, int]]:
        rows = self._all(
            "SELECT model, COUNT(*) AS n, (SELECT v.version FROM versions v WHERE v.model = versions.model"
            " ORDER BY v.seq DESC LIMIT 1) AS latest FROM versions GROUP BY model ORDER BY model"
        )
        return [(r["model"], r["latest"], r["n"]) for r in rows]

    # -- devices ------------------------------------------------------------------------
    def put_device(self, device: Device) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO devices (device_id, token_sha256, hardware_class, backends, grp, labels, agent_version,"
                " enrolled_at, last_seen, active_model, state, deployment_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (device_id) DO UPDATE SET token_sha256 = excluded.token_sha256,"
                " hardware_class = excluded.hardware_class, backends = excluded.backends, grp = excluded.grp,"
                " labels = excluded.labels, agent_version = excluded.agent_version,"
                " last_seen = excluded.last_seen",
                (device.device_id, device.token_sha256, device.hardware_class, json.dumps(list(device.backends)),
                 device.group, json.dumps(dict(device.labels)), device.agent_version, device.enrolled_at,
                 device.last_seen, device.active_model, device.state, device.deployment_id),
            )

    def device(self, device_id: str) -> Device | None:
        row = self._one("SELECT * FROM devices WHERE device_id = ?", (device_id,))
        return records.device(row) if row else None

    def device_by_token(self, token_sha256: str) -> Device | None:
        row = self._one("SELECT * FROM devices WHERE token_sha256 = ?", (token_sha256,))
        return records.device(row) if row else None

    def devices(self, *, group: str | None = None, after: str = "", limit: int | None = None) -> list[Device]:
        where, params = ("device_id > ?", [after]) if group is None else ("grp = ? AND device_id > ?", [group, after])
        return [records.device(r) for r in self._all(
            f"SELECT * FROM devices WHERE {where} ORDER BY device_id LIMIT ?", (*params, -1 if limit is None else limit))]

    def device_profiles(self, *, group: str | None = None) -> list[DeviceProfile]:
        """Every device's (or a group's) planning profile, in device id order."""
        sql = "SELECT device_id, hardware_class, backends, grp FROM devices"
        rows = self._all(sql + " ORDER BY device_id") if group is None else \
            self._all(sql + " WHERE grp = ? ORDER BY device_id", (group,))
        return [DeviceProfile(r[0], r[1], tuple(json.loads(r[2])), r[3]) for r in rows]

    def record_report(self, device_id: str, *, at: float, state: str, active_model: str, deployment_id: str,
                      error: str = "") -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE devices SET last_seen = ?, state = ?, active_model = ?, deployment_id = ? WHERE device_id = ?",
                (at, state, active_model, deployment_id, device_id),
            )
            if error:
                c.execute("UPDATE devices SET last_error = ?, last_error_at = ? WHERE device_id = ?",
                          (error, at, device_id))

    def touch_device(self, device_id: str, at: float) -> None:
        with self._tx() as c:
            c.execute("UPDATE devices SET last_seen = ? WHERE device_id = ?", (at, device_id))

    def touch_devices(self, device_ids: Sequence[str], at: float) -> None:
        with self._tx() as c:
            c.executemany("UPDATE devices SET last_seen = ? WHERE device_id = ?", [(at, d) for d in device_ids])

    def find_devices(self, query: DeviceQuery) -> DevicePage:
        where, params = device_filter(query, mark="?")
        order = device_order(query)
        with self._lock:
            total = self._conn.execute(f"SELECT COUNT(*) FROM devices{where}", params).fetchone()[0]
            rows = self._conn.execute(f"SELECT * FROM devices{where} ORDER BY {order} LIMIT ? OFFSET ?",
                                      [*params, query.limit, query.offset]).fetchall()
        return DevicePage(devices=[records.device(r) for r in rows], total=total)

    def device_tally(self, *, online_since: float, late_since: float) -> list[DeviceTally]:
        rows = self._all(
            "SELECT hardware_class, active_model, CASE WHEN last_seen >= ? THEN 'online'"
            " WHEN last_seen >= ? THEN 'late' ELSE 'offline' END AS live, COUNT(*) AS n"
            " FROM devices GROUP BY hardware_class, active_model, live ORDER BY hardware_class, active_model, live",
            (online_since, late_since))
        return [DeviceTally(r[0], r[1], r[2], r[3]) for r in rows]

    # -- device identity ----------------------------------------------------------------
    def device_identity(self, device_id: str) -> DeviceIdentity | None:
        row = self._one("SELECT * FROM device_identities WHERE device_id = ?", (device_id,))
        return DeviceIdentity(**dict(row)) if row else None

    def put_device_identity(self, identity: DeviceIdentity) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO device_identities VALUES (?, ?, ?, ?, ?)",
                (identity.device_id, identity.public_key_pem, identity.certificate_sha256, identity.issued_at,
                 identity.reprovision_approved_at),
            )

    def add_enroll_token(self, token: EnrollToken) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO enroll_tokens VALUES (?, ?, ?, ?, ?, ?)",
                      (token.token_sha256, token.name, token.group, token.created_at, token.expires_at,
                       token.uses_left))

    def use_enroll_token(self, token_sha256: str, at: float) -> EnrollToken | None:
        with self._tx() as c:
            row = c.execute(
                "UPDATE enroll_tokens SET uses_left = uses_left - 1 WHERE token_sha256 = ?"
                " AND (expires_at IS NULL OR expires_at > ?) AND (uses_left IS NULL OR uses_left > 0)"
                " RETURNING *", (token_sha256, at)).fetchone()
        return records.enroll_token(row) if row else None

    def enroll_tokens(self) -> list[EnrollToken]:
        return [records.enroll_token(r) for r in self._all("SELECT * FROM enroll_tokens ORDER BY created_at")]

    # -- deployments --------------------------------------------------------------------
    def add_deployment(self, deployment: Deployment, devices: Sequence[DeploymentDevice]) -> None:
        d = deployment
        with self._tx() as c:
            c.execute(
                "INSERT INTO deployments VALUES (?, ?, ?, ?, ?, ?, ?)",
                (d.deployment_id, d.model, d.version, d.target, d.status, d.created_at, d.updated_at),
            )
            _insert_deployment_devices(c, devices)

    def add_deployment_devices(self, devices: Sequence[DeploymentDevice]) -> None:
        with self._tx() as c:
            _insert_deployment_devices(c, devices)

    def deployment(self, deployment_id: str) -> Deployment | None:
        row = self._one("SELECT * FROM deployments WHERE deployment_id = ?", (deployment_id,))
        return records.deployment(row) if row else None

    def deployments(self, *, limit: int = 200) -> list[Deployment]:
        rows = self._all("SELECT * FROM deployments ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,))
        return [records.deployment(r) for r in rows]

    def deployment_devices(self, deployment_id: str, *, after: str = "",
                           limit: int | None = None) -> list[DeploymentDevice]:
        rows = self._all(
            "SELECT * FROM deployment_devices WHERE deployment_id = ? AND device_id > ? ORDER BY device_id LIMIT ?",
            (deployment_id, after, -1 if limit is None else limit),
        )
        return [records.deployment_device(r) for r in rows]

    def deployment_device(self, deployment_id: str, device_id: str) -> DeploymentDevice | None:
        row = self._one(
            "SELECT * FROM deployment_devices WHERE deployment_id = ? AND device_id = ?", (deployment_id, device_id)
        )
        return records.deployment_device(row) if row else None

    def update_deployment_device(
        self, deployment_id: str, device_id: str, *, state: str, outcome: str, reason: str, at: float
    ) -> None:
        with self._tx() as c:
            c.execute("BEGIN IMMEDIATE")   # the write lock first: another store must not count this row too
            old = c.execute("SELECT outcome FROM deployment_devices WHERE deployment_id = ? AND device_id = ?",
                            (deployment_id, device_id)).fetchone()
            if old is None:
                return
            c.execute(
                "UPDATE deployment_devices SET state = ?, outcome = ?, reason = ?, updated_at = ?"
                " WHERE deployment_id = ? AND device_id = ?",
                (state, outcome, reason, at, deployment_id, device_id),
            )
            if old[0] != outcome:
                _count(c, deployment_id, old[0], -1)
                _count(c, deployment_id, outcome, 1)

    def deployment_counts(self, deployment_id: str) -> dict[str, int]:
        rows = self._all("SELECT outcome, n FROM deployment_counts WHERE deployment_id = ? AND n != 0",
                         (deployment_id,))
        return {r["outcome"]: r["n"] for r in rows}

    def close_open_rows(self, device_ids: Sequence[str], *, outcome: str, reason: str, at: float,
                        keep: str = "") -> list[str]:
        """Closes every open row of these devices (but deployment `keep`'s) with `outcome`;
        returns the deployments touched. One transaction, counters included."""
        touched: dict[str, int] = {}
        with self._tx() as c:
            c.execute("BEGIN IMMEDIATE")   # read and close under the write lock, as one step
            for chunk in _chunks(device_ids, 500):
                marks = ",".join("?" * len(chunk))
                rows = c.execute(
                    f"SELECT deployment_id, device_id FROM deployment_devices WHERE outcome = ''"
                    f" AND deployment_id != ? AND device_id IN ({marks})", (keep, *chunk),
                ).fetchall()
                c.executemany(
                    "UPDATE deployment_devices SET outcome = ?, reason = ?, updated_at = ?"
                    " WHERE deployment_id = ? AND device_id = ?",
                    [(outcome, reason, at, r[0], r[1]) for r in rows],
                )
                for r in rows:
                    touched[r[0]] = touched.get(r[0], 0) + 1
            for deployment_id, n in touched.items():
                _count(c, deployment_id, "", -n)
                _count(c, deployment_id, outcome, n)
        return sorted(touched)

    def unsigned_rows(self, *, limit: int) -> list[DeploymentDevice]:
        """Open rows of active deployments whose device is not yet assigned that deployment
        (without `previous`: parsing it per row was most of the signing loop's time)."""
        rows = self._all(
            "SELECT dd.deployment_id, dd.device_id, dd.variant, dd.sha256, dd.state, dd.outcome, dd.reason,"
            " dd.updated_at, NULL AS previous FROM deployment_devices dd JOIN deployments d ON d.deployment_id = dd.deployment_id"
            " LEFT JOIN assignments a ON a.device_id = dd.device_id"
            " WHERE dd.outcome = '' AND d.status = 'active'"
            " AND (a.deployment_id IS NULL OR a.deployment_id != dd.deployment_id)"
            " ORDER BY d.created_at, dd.rowid LIMIT ?", (limit,),
        )
        return [records.deployment_device(r) for r in rows]

    def assignments_of(self, device_ids: Sequence[str]) -> dict[str, Assignment]:
        found: dict[str, Assignment] = {}
        for chunk in _chunks(device_ids, 500):
            marks = ",".join("?" * len(chunk))
            for row in self._all(f"SELECT * FROM assignments WHERE device_id IN ({marks})", chunk):
                found[row["device_id"]] = Assignment(device_id=row["device_id"], deployment_id=row["deployment_id"],
                                                     document=json.loads(row["document"]))
        return found

    def device_deployments(self, device_id: str, *, limit: int = 50) -> list[DeploymentDevice]:
        rows = self._all("SELECT * FROM deployment_devices WHERE device_id = ? ORDER BY updated_at DESC LIMIT ?",
                         (device_id, limit))
        return [records.deployment_device(r) for r in rows]

    def open_rows_of(self, device_id: str) -> list[DeploymentDevice]:
        rows = self._all("SELECT * FROM deployment_devices WHERE device_id = ? AND outcome = ''", (device_id,))
        return [records.deployment_device(r) for r in rows]

    def set_deployment_status(self, deployment_id: str, status: str, at: float) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE deployments SET status = ?, updated_at = ? WHERE deployment_id = ?",
                (status, at, deployment_id),
            )

    def assignment(self, device_id: str) -> Assignment | None:
        row = self._one("SELECT * FROM assignments WHERE device_id = ?", (device_id,))
        if row is None:
            return None
        return Assignment(device_id=device_id, deployment_id=row["deployment_id"], document=json.loads(row["document"]))

    def set_assignment(self, device_id: str, assignment: Assignment | None) -> None:
        if assignment is not None:
            self.set_assignments([assignment])
            return
        with self._tx() as c:
            c.execute("DELETE FROM assignments WHERE device_id = ?", (device_id,))

    def set_assignments(self, assignments: Sequence[Assignment]) -> None:
        with self._tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO assignments VALUES (?, ?, ?)",
                [(a.device_id, a.deployment_id, json.dumps(dict(a.document))) for a in assignments],
            )

    def pins(self, model: str) -> dict[str, str]:
        rows = self._all("SELECT scope, variant FROM variant_pins WHERE model = ?", (model,))
        return {r["scope"]: r["variant"] for r in rows}

    def set_pin(self, model: str, scope: str, variant: str | None) -> None:
        with self._tx() as c:
            if variant is None:
                c.execute("DELETE FROM variant_pins WHERE model = ? AND scope = ?", (model, scope))
            else:
                c.execute("INSERT OR REPLACE INTO variant_pins VALUES (?, ?, ?)", (model, scope, variant))

    # -- rollouts -----------------------------------------------------------------------
    def add_rollout(self, rollout: Rollout, stages: Sequence[RolloutStage], devices: Sequence[RolloutDevice],
                    entry: RolloutLogEntry) -> None:
        r = rollout
        with self._tx() as c:
            c.execute("INSERT INTO rollouts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (r.rollout_id, r.model, r.version, r.target, r.deployment_id, r.state, r.stage,
                       json.dumps(dict(r.spec)), r.created_at, r.updated_at, r.revision))
            _write_rollout_parts(c, stages, devices, [entry])

    def rollout(self, rollout_id: str) -> Rollout | None:
        row = self._one("SELECT * FROM rollouts WHERE rollout_id = ?", (rollout_id,))
        return records.rollout(row) if row else None

    def rollouts(self, *, limit: int = 200, states: Sequence[str] | None = None) -> list[Rollout]:
        if states is None:
            rows = self._all("SELECT * FROM rollouts ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,))
        else:
            marks = ",".join("?" * len(states))
            rows = self._all(f"SELECT * FROM rollouts WHERE state IN ({marks}) ORDER BY created_at DESC, rowid DESC"
                             " LIMIT ?", (*states, limit))
        return [records.rollout(r) for r in rows]

    def rollout_stages(self, rollout_id: str) -> list[RolloutStage]:
        rows = self._all("SELECT * FROM rollout_stages WHERE rollout_id = ? ORDER BY idx", (rollout_id,))
        return [records.rollout_stage(r) for r in rows]

    def rollout_devices(self, rollout_id: str) -> list[RolloutDevice]:
        rows = self._all("SELECT * FROM rollout_devices WHERE rollout_id = ? ORDER BY stage, device_id", (rollout_id,))
        return [RolloutDevice(**dict(r)) for r in rows]

    def rollout_log(self, rollout_id: str) -> list[RolloutLogEntry]:
        rows = self._all("SELECT * FROM rollout_log WHERE rollout_id = ? ORDER BY seq", (rollout_id,))
        return [records.rollout_log_entry(r) for r in rows]

    def save_rollout(self, rollout: Rollout, *, stages: Sequence[RolloutStage] = (),
                     devices: Sequence[RolloutDevice] = (), entries: Sequence[RolloutLogEntry] = ()) -> bool:
        r = rollout
        with self._tx() as c:
            cur = c.execute(
                "UPDATE rollouts SET state = ?, stage = ?, spec = ?, updated_at = ?, revision = ?"
                " WHERE rollout_id = ? AND revision = ?",
                (r.state, r.stage, json.dumps(dict(r.spec)), r.updated_at, r.revision, r.rollout_id, r.revision - 1))
            if cur.rowcount != 1:
                return False
            _write_rollout_parts(c, stages, devices, entries)
        return True

    # -- telemetry ----------------------------------------------------------------------
    def ingest_telemetry(self, device_id: str, batch_id: str, rows: Sequence[StatsRow], at: float) -> bool:
        """Counts a batch once: returns True (duplicate) when (device, batch) was seen before."""
        return self.ingest_telemetry_many([TelemetryBatch(device_id, batch_id, rows)], at)[0]

    def ingest_telemetry_many(self, batches: Sequence[TelemetryBatch], at: float) -> list[bool]:
        """Counts each batch once, all in one transaction: the dedupe rows, the aggregate
        updates and the windows commit together; SQL adds the sums (sqlite_telemetry)."""
        duplicates: list[bool] = []
        with self._tx() as c:
            c.execute("BEGIN IMMEDIATE")   # the write lock first: another store must not store these batches too
            seen = _stored_batches(c, [(b.device_id, b.batch_id) for b in batches])
            fresh: list[TelemetryBatch] = []
            for b in batches:
                key = (b.device_id, b.batch_id)
                duplicates.append(key in seen)
                if key in seen:
                    continue
                seen.add(key)   # the same batch twice in one flush counts once too
                fresh.append(b)
            c.executemany("INSERT INTO telemetry_batches VALUES (?, ?, ?)", [(b.device_id, b.batch_id, at) for b in fresh])
            telemetry_tables.add_batches(c, fresh, at)
        return duplicates

    def window_rows(self, model: str, *, since: float, until: float | None = None,
                    device_ids: Sequence[str] | None = None) -> list[WindowRow]:
        first, last = records.minutes(since, until)
        table = "telemetry_windows"
        sql = f"SELECT {telemetry_tables.select_list(table)} FROM {table} WHERE model = ? AND minute BETWEEN ? AND ?"
        if device_ids is None:
            return [records.window_row(r, telemetry_tables.histogram_of(table, r))
                    for r in self._all(sql + " ORDER BY minute, device_id", (model, first, last))]
        rows: list[WindowRow] = []
        for chunk in _chunks(list(device_ids), 500):
            rows += [records.window_row(r, telemetry_tables.histogram_of(table, r)) for r in self._all(
                sql + f" AND device_id IN ({','.join('?' * len(chunk))})", (model, first, last, *chunk))]
        return sorted(rows, key=lambda w: (w.minute, w.device_id))

    def series_rows(self, model: str, *, since: float, until: float | None = None) -> list[SeriesRow]:
        first, last = records.minutes(since, until)
        table = "telemetry_series"
        return [
            records.series_row(r, telemetry_tables.histogram_of(table, r))
            for r in self._all(f"SELECT {telemetry_tables.select_list(table)} FROM {table}"
                               " WHERE model = ? AND minute BETWEEN ? AND ? ORDER BY minute", (model, first, last))
        ]

    def prune_windows(self, *, devices_before: float, series_before: float) -> int:
        with self._tx() as c:
            c.execute("BEGIN IMMEDIATE")
            # windows are folded into the aggregates before they go (a server idle for hours)
            telemetry_tables.fold(c, until=int(devices_before // WINDOW_S) - 1, at=time.time())
            n = c.execute("DELETE FROM telemetry_windows WHERE minute < ?", (int(devices_before // WINDOW_S),)).rowcount
            return n + c.execute("DELETE FROM telemetry_series WHERE minute < ?",
                                 (int(series_before // WINDOW_S),)).rowcount

    def fleet_aggregates(self) -> list[FleetAggregate]:
        table = "telemetry_fleet"
        return [FleetAggregate(model=r[0], version=r[1], variant=r[2], hardware_class=r[3], backend=r[4],
                               inferences=r[5], errors=r[6], latency_sum_ms=r[7],
                               histogram=telemetry_tables.histogram_of(table, r))
                for r in self._all(f"SELECT {telemetry_tables.select_list(table)} FROM {table}"
                                   " ORDER BY model, version, variant, hardware_class, backend")]

    def aggregates(self, *, device_id: str | None = None) -> list[Aggregate]:
        sql, params = telemetry_tables.aggregates_sql(device_id)
        return [Aggregate(device_id=r[0], model=r[1], version=r[2], variant=r[3], inferences=r[4], errors=r[5],
                          latency_sum_ms=r[6], histogram=telemetry_tables.histogram_of("telemetry_aggregates", r))
                for r in self._all(sql, params)]
