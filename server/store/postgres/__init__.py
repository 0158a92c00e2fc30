"""`Store` on PostgreSQL (psycopg 3): the scale-out store several server replicas share.

One module per table family (`models`, `devices`, `deployments`, `rollouts`, `telemetry`), each a
mixin over `database.Database` (the pool, transactions, advisory locks, change
notices); `schema` holds the migrations. Semantics match `fleetcast.server.store.sqlite`
call for call; what keeps concurrent replicas apart is the database (row locks,
ON CONFLICT, advisory locks), never a lock in one process. Why and how: ADR 0006.
"""

from __future__ import annotations

import time

from fleetcast.server.store.postgres.deployments import DeploymentTables
from fleetcast.server.store.postgres.devices import DeviceTables
from fleetcast.server.store.postgres.models import STALE_RESERVATION_S, ModelTables
from fleetcast.server.store.postgres.rollouts import RolloutTables
from fleetcast.server.store.postgres.schema import MIGRATIONS
from fleetcast.server.store.postgres.telemetry import TelemetryTables

__all__ = ["MIGRATIONS", "PostgresStore"]


class PostgresStore(ModelTables, DeviceTables, DeploymentTables, RolloutTables, TelemetryTables):
    """`Store` on a PostgreSQL database given as a libpq URL (postgresql://...)."""

    def __init__(self, url: str, *, pool_size: int = 8, connect_timeout_s: float = 5.0) -> None:
        super().__init__(url, pool_size=pool_size, connect_timeout_s=connect_timeout_s)
        self.drop_stale_reservations(before=time.time() - STALE_RESERVATION_S)
