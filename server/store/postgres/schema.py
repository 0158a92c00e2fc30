"""The PostgreSQL schema: migrations as an ordered list of named functions, one per step.

Each name is recorded in the `migrations` table when applied and is never renamed or
reused, as in the SQLite store. A replica that starts while another migrates waits on
one advisory lock, so each step runs once however many replicas start together.
Column names and meanings follow `fleetcast.server.store.sqlite`; types are native
(bytea, bigint, double precision, bigint[] histograms, text JSON documents); text sorts
bytewise (COLLATE "C"), as SQLite does, whatever the database's default collation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import psycopg

logger = logging.getLogger(__name__)

MIGRATION_LOCK: Final = "fleetcast:migrations"


def create_metadata(c: psycopg.Cursor) -> None:
    c.execute("CREATE TABLE metadata (repository text COLLATE \"C\" NOT NULL, name text COLLATE \"C\" NOT NULL, data bytea NOT NULL,"
              " PRIMARY KEY (repository, name))")


def create_models(c: psycopg.Cursor) -> None:
    c.execute("CREATE TABLE artifacts (sha256 text COLLATE \"C\" PRIMARY KEY, length bigint NOT NULL, kind text COLLATE \"C\" NOT NULL,"
              " model text COLLATE \"C\" NOT NULL, version text COLLATE \"C\" NOT NULL, variant text COLLATE \"C\" NOT NULL, format text COLLATE \"C\" NOT NULL)")
    c.execute("CREATE TABLE versions (model text COLLATE \"C\" NOT NULL, version text COLLATE \"C\" NOT NULL, seq bigint NOT NULL,"
              " created_at double precision NOT NULL, inputs text COLLATE \"C\" NOT NULL, outputs text COLLATE \"C\" NOT NULL,"
              " golden_sha256 text, golden_length bigint, atol double precision, rtol double precision,"
              " compression text, PRIMARY KEY (model, version))")
    # `position` keeps the variants in the order they were added (SQLite's rowid).
    c.execute("CREATE TABLE variants (model text COLLATE \"C\" NOT NULL, version text COLLATE \"C\" NOT NULL, variant text COLLATE \"C\" NOT NULL,"
              " format text COLLATE \"C\" NOT NULL, sha256 text COLLATE \"C\" NOT NULL, length bigint NOT NULL, metrics text COLLATE \"C\" NOT NULL,"
              " golden text, position bigserial, PRIMARY KEY (model, version, variant))")
    c.execute("CREATE TABLE version_reservations (model text COLLATE \"C\" NOT NULL, version text COLLATE \"C\" NOT NULL,"
              " reserved_at double precision NOT NULL, PRIMARY KEY (model, version))")
    c.execute("CREATE TABLE variant_pins (model text COLLATE \"C\" NOT NULL, scope text COLLATE \"C\" NOT NULL, variant text COLLATE \"C\" NOT NULL,"
              " PRIMARY KEY (model, scope))")


def create_devices(c: psycopg.Cursor) -> None:
    c.execute("CREATE TABLE devices (device_id text COLLATE \"C\" PRIMARY KEY, token_sha256 text COLLATE \"C\" NOT NULL UNIQUE,"
              " hardware_class text COLLATE \"C\" NOT NULL, backends text COLLATE \"C\" NOT NULL, grp text COLLATE \"C\" NOT NULL, labels text COLLATE \"C\" NOT NULL,"
              " agent_version text COLLATE \"C\" NOT NULL, enrolled_at double precision NOT NULL, last_seen double precision,"
              " active_model text COLLATE \"C\" NOT NULL DEFAULT '', state text COLLATE \"C\" NOT NULL DEFAULT '',"
              " deployment_id text COLLATE \"C\" NOT NULL DEFAULT '', last_error text COLLATE \"C\" NOT NULL DEFAULT '',"
              " last_error_at double precision)")
    c.execute("CREATE INDEX devices_grp ON devices (grp)")
    c.execute("CREATE TABLE device_identities (device_id text COLLATE \"C\" PRIMARY KEY, public_key_pem text COLLATE \"C\" NOT NULL,"
              " certificate_sha256 text COLLATE \"C\" NOT NULL, issued_at double precision NOT NULL,"
              " reprovision_approved_at double precision)")
    c.execute("CREATE TABLE enroll_tokens (token_sha256 text COLLATE \"C\" PRIMARY KEY, name text COLLATE \"C\" NOT NULL, grp text COLLATE \"C\" NOT NULL,"
              " created_at double precision NOT NULL, expires_at double precision, uses_left bigint)")


def create_deployments(c: psycopg.Cursor) -> None:
    # `position` orders deployments created in the same instant (SQLite's rowid) and rows to sign.
    c.execute("CREATE TABLE deployments (deployment_id text COLLATE \"C\" PRIMARY KEY, model text COLLATE \"C\" NOT NULL, version text COLLATE \"C\" NOT NULL,"
              " target text COLLATE \"C\" NOT NULL, status text COLLATE \"C\" NOT NULL, created_at double precision NOT NULL,"
              " updated_at double precision NOT NULL, position bigserial)")
    c.execute("CREATE TABLE deployment_devices (deployment_id text COLLATE \"C\" NOT NULL, device_id text COLLATE \"C\" NOT NULL,"
              " variant text COLLATE \"C\" NOT NULL, sha256 text COLLATE \"C\" NOT NULL, state text COLLATE \"C\" NOT NULL, outcome text COLLATE \"C\" NOT NULL,"
              " reason text COLLATE \"C\" NOT NULL, updated_at double precision NOT NULL, previous text,"
              " position bigserial, PRIMARY KEY (deployment_id, device_id))")
    c.execute("CREATE INDEX deployment_devices_device ON deployment_devices (device_id, outcome)")
    c.execute("CREATE INDEX deployment_devices_open ON deployment_devices (outcome, deployment_id)")
    # Devices per (deployment, outcome), '' for those pending: changed in each row's transaction.
    c.execute("CREATE TABLE deployment_counts (deployment_id text COLLATE \"C\" NOT NULL, outcome text COLLATE \"C\" NOT NULL,"
              " n bigint NOT NULL, PRIMARY KEY (deployment_id, outcome))")
    c.execute("CREATE TABLE assignments (device_id text COLLATE \"C\" PRIMARY KEY, deployment_id text COLLATE \"C\" NOT NULL,"
              " document text COLLATE \"C\" NOT NULL)")


def create_telemetry(c: psycopg.Cursor) -> None:
    c.execute("CREATE TABLE telemetry_batches (device_id text COLLATE \"C\" NOT NULL, batch_id text COLLATE \"C\" NOT NULL,"
              " received_at double precision NOT NULL, PRIMARY KEY (device_id, batch_id))")
    c.execute("CREATE TABLE telemetry_aggregates (device_id text COLLATE \"C\" NOT NULL, model text COLLATE \"C\" NOT NULL,"
              " version text COLLATE \"C\" NOT NULL, variant text COLLATE \"C\" NOT NULL, inferences bigint NOT NULL, errors bigint NOT NULL,"
              " latency_sum_ms double precision NOT NULL, histogram bigint[] NOT NULL,"
              " updated_at double precision NOT NULL, PRIMARY KEY (device_id, model, version, variant))")


def create_telemetry_windows(c: psycopg.Cursor) -> None:
    # Per device per minute and per cohort per minute: see WINDOW_S in fleetcast.server.store.
    c.execute("CREATE TABLE telemetry_windows (model text COLLATE \"C\" NOT NULL, minute bigint NOT NULL,"
              " device_id text COLLATE \"C\" NOT NULL, version text COLLATE \"C\" NOT NULL,"
              " variant text COLLATE \"C\" NOT NULL, backend text COLLATE \"C\" NOT NULL, inferences bigint NOT NULL,"
              " errors bigint NOT NULL, latency_sum_ms double precision NOT NULL, histogram bigint[] NOT NULL,"
              " PRIMARY KEY (model, minute, device_id, version, variant, backend))")
    c.execute("CREATE TABLE telemetry_series (model text COLLATE \"C\" NOT NULL, minute bigint NOT NULL,"
              " version text COLLATE \"C\" NOT NULL, variant text COLLATE \"C\" NOT NULL,"
              " hardware_class text COLLATE \"C\" NOT NULL, backend text COLLATE \"C\" NOT NULL,"
              " inferences bigint NOT NULL, errors bigint NOT NULL, latency_sum_ms double precision NOT NULL,"
              " histogram bigint[] NOT NULL, PRIMARY KEY (model, minute, version, variant, hardware_class, backend))")


def create_rollouts(c: psycopg.Cursor) -> None:
    # Staged rollouts: the rollout (`revision` guards every save; `position` orders those
    # created in one instant, SQLite's rowid), its stages, its devices, an append-only log.
    c.execute("CREATE TABLE rollouts (rollout_id text COLLATE \"C\" PRIMARY KEY, model text COLLATE \"C\" NOT NULL,"
              " version text COLLATE \"C\" NOT NULL, target text COLLATE \"C\" NOT NULL,"
              " deployment_id text COLLATE \"C\" NOT NULL, state text COLLATE \"C\" NOT NULL, stage bigint NOT NULL,"
              " spec text NOT NULL, created_at double precision NOT NULL, updated_at double precision NOT NULL,"
              " revision bigint NOT NULL, position bigserial)")
    c.execute("CREATE INDEX rollouts_state ON rollouts (state)")
    c.execute("CREATE TABLE rollout_stages (rollout_id text COLLATE \"C\" NOT NULL, idx bigint NOT NULL,"
              " size text COLLATE \"C\" NOT NULL, state text COLLATE \"C\" NOT NULL, started_at double precision,"
              " soak_started_at double precision, ended_at double precision, results text NOT NULL,"
              " PRIMARY KEY (rollout_id, idx))")
    c.execute("CREATE TABLE rollout_devices (rollout_id text COLLATE \"C\" NOT NULL, device_id text COLLATE \"C\" NOT NULL,"
              " stage bigint NOT NULL, cohort text COLLATE \"C\" NOT NULL, variant text COLLATE \"C\" NOT NULL,"
              " state text COLLATE \"C\" NOT NULL, reason text COLLATE \"C\" NOT NULL, assigned_at double precision,"
              " updated_at double precision NOT NULL, PRIMARY KEY (rollout_id, device_id))")
    c.execute("CREATE TABLE rollout_log (rollout_id text COLLATE \"C\" NOT NULL, seq bigint NOT NULL,"
              " at double precision NOT NULL, actor text COLLATE \"C\" NOT NULL, event text COLLATE \"C\" NOT NULL,"
              " from_state text COLLATE \"C\" NOT NULL, to_state text COLLATE \"C\" NOT NULL,"
              " reason text COLLATE \"C\" NOT NULL, snapshot text NOT NULL, PRIMARY KEY (rollout_id, seq))")


def add_device_table_indexes(c: psycopg.Cursor) -> None:
    # The dashboard's device table sorts and filters 10,000s of devices in SQL.
    c.execute("CREATE INDEX devices_last_seen ON devices (last_seen)")
    c.execute("CREATE INDEX devices_hardware ON devices (hardware_class, device_id)")
    c.execute("CREATE INDEX devices_active_model ON devices (active_model, device_id)")


def create_telemetry_fleet(c: psycopg.Cursor) -> None:
    # The cumulative aggregates summed per hardware class, kept at ingest in the same
    # transaction (what /metrics exports); filled here from the aggregates already stored,
    # whose back end was not recorded ("").
    from fleetcast.server.store.postgres import telemetry   # it imports this module's importer

    c.execute("CREATE TABLE telemetry_fleet (model text COLLATE \"C\" NOT NULL, version text COLLATE \"C\" NOT NULL,"
              " variant text COLLATE \"C\" NOT NULL, hardware_class text COLLATE \"C\" NOT NULL,"
              " backend text COLLATE \"C\" NOT NULL, inferences bigint NOT NULL, errors bigint NOT NULL,"
              " latency_sum_ms double precision NOT NULL, histogram bigint[] NOT NULL,"
              " PRIMARY KEY (model, version, variant, hardware_class, backend))")
    telemetry.fill_fleet(c)


def add_metadata_roles(c: psycopg.Cursor) -> None:
    """Each replaceable metadata file's role, version and write time, so superseded ones can
    be pruned; files written before this count as written now (the name pattern is
    `rows.metadata_role`'s)."""
    c.execute("ALTER TABLE metadata ADD COLUMN role text COLLATE \"C\", ADD COLUMN version bigint,"
              " ADD COLUMN written_at double precision")
    c.execute("UPDATE metadata SET role = substring(name from '^[0-9]{1,10}\\.(snapshot|targets|bin-[0-9a-f]{2})\\.json$'),"
              " written_at = extract(epoch from clock_timestamp())")
    c.execute("UPDATE metadata SET version = split_part(name, '.', 1)::bigint WHERE role IS NOT NULL")
    c.execute("CREATE INDEX metadata_roles ON metadata (repository, role, version)")
def histograms_in_bucket_columns(c: psycopg.Cursor) -> None:
    # ADR 0009: the four telemetry tables keep one bigint column per histogram bucket
    # (h0..h66) instead of a bigint[], added column by column in SQL; every row converted.
    from fleetcast.server.store.postgres import telemetry   # it imports this module's importer

    for table in ("telemetry_aggregates", "telemetry_windows", "telemetry_series", "telemetry_fleet"):
        telemetry.convert_from_arrays(c, table)


def telemetry_room_for_hot_updates(c: psycopg.Cursor) -> None:
    # Every flush updates most rows of the per-device tables again: half of each page kept
    # free lets PostgreSQL update them in place (HOT, no new index entry), 15-30 % faster.
    for table in ("telemetry_aggregates", "telemetry_windows"):
        c.execute(f"ALTER TABLE {table} SET (fillfactor = 50)")


# Applied in order; names are recorded and never change.
MIGRATIONS: Final[list[Callable[[psycopg.Cursor], None]]] = [
    create_metadata,
    create_models,
    create_devices,
    create_deployments,
    create_telemetry,
    create_telemetry_windows,
    create_rollouts,
    add_device_table_indexes,
    create_telemetry_fleet,
    histograms_in_bucket_columns,
    telemetry_room_for_hot_updates,
    add_metadata_roles,
]


def migrate(conn: psycopg.Connection) -> list[str]:
    """Applies the migrations not yet recorded, each in its own transaction, holding the
    migration lock (on `conn`, which must be in autocommit mode) throughout; returns the
    names applied now."""
    applied: list[str] = []
    with conn.cursor() as c:
        c.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (MIGRATION_LOCK,))
        try:
            c.execute("CREATE TABLE IF NOT EXISTS migrations (name text COLLATE \"C\" PRIMARY KEY,"
                      " applied_at double precision NOT NULL, position bigserial)")
            done = {row[0] for row in c.execute("SELECT name FROM migrations").fetchall()}
            for step in MIGRATIONS:
                if step.__name__ in done:
                    continue
                with conn.transaction():   # a failed step leaves nothing of itself
                    step(c)
                    c.execute("INSERT INTO migrations (name, applied_at) VALUES (%s, %s)",
                              (step.__name__, time.time()))
                applied.append(step.__name__)
                logger.info("migration applied name=%s", step.__name__)
        finally:
            c.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (MIGRATION_LOCK,))
    return applied
