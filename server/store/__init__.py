"""The server's state, behind one protocol that two stores fill.

`Store` lists everything the domain asks of storage; the records below are what
crosses that line. `sqlite.SqliteStore` is the embedded default (one server process);
`postgres.PostgresStore` is shared by several server replicas (ADR 0006).
`fleetcast.server.store.open.open_store(url)` builds either. A store also fills the
signing module's `MetadataStore` protocol (get_metadata / put_metadata).

Concurrency goes through the store, never through a lock in one process: single
statements with row locks or ON CONFLICT, transactions, and `exclusive(name)` for
the few steps that read, compute and write (signing metadata versions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

# Telemetry aggregates saturate here rather than overflow: integers stay exact in JSON
# (2^53) and in 64-bit columns, latency sums stay finite. Every store clamps alike.
MAX_AGGREGATE_COUNT: Final = 2**53
MAX_AGGREGATE_LATENCY_MS: Final = float(2**53)


def saturating_add(a: int | float, b: int | float, limit: int | float) -> Any:
    """a + b, never above `limit` (both are non-negative: telemetry checks them first)."""
    return min(a + b, limit)


@dataclass(frozen=True)
class Golden:
    sha256: str
    length: int
    atol: float
    rtol: float


@dataclass(frozen=True)
class Variant:
    variant: str
    format: str
    sha256: str
    length: int
    metrics: Mapping[str, Any] = field(default_factory=dict)
    golden: Golden | None = None  # this variant's own outputs on the version's golden inputs


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: str
    created_at: float
    inputs: Mapping[str, Mapping[str, Any]]
    outputs: Mapping[str, Mapping[str, Any]]
    golden: Golden | None
    variants: Sequence[Variant] = ()
    # None without --compress; else {"status": "running"|"done"|"failed",
    # "levels": [{"level", "error"}], "notes": [...]}
    compression: Mapping[str, Any] | None = None

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.variant == name), None)


@dataclass(frozen=True)
class Artifact:
    sha256: str
    length: int
    kind: str  # "model" | "golden"
    model: str
    version: str
    variant: str
    format: str


@dataclass(frozen=True)
class Device:
    device_id: str
    token_sha256: str
    hardware_class: str
    backends: Sequence[str]
    group: str
    labels: Mapping[str, str]
    agent_version: str
    enrolled_at: float
    last_seen: float | None = None
    active_model: str = ""
    state: str = ""
    deployment_id: str = ""  # deployment of the latest report
    last_error: str = ""     # the latest failure reported, whatever deployment it was for
    last_error_at: float | None = None


DEVICE_SORTS: Final = ("id", "last_seen", "hardware_class", "group", "active_model", "state", "enrolled_at")


@dataclass(frozen=True)
class DeviceQuery:
    """One page of the device table: filters (all optional, combined with AND), order, window.

    Liveness is given as last-seen bounds so a store can filter in SQL: `seen_since`
    keeps devices seen at or after it, `unseen_since` those never seen or seen before it.
    """

    text: str = ""             # part of the device id (case-insensitive)
    hardware_class: str = ""
    group: str = ""
    active_model: str = ""     # "model@version" exactly, or "model" for any of its versions
    seen_since: float | None = None
    unseen_since: float | None = None
    sort: str = "id"           # one of DEVICE_SORTS; ties broken by id
    descending: bool = False
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class DevicePage:
    devices: Sequence[Device]
    total: int                 # devices matching the filters, over all pages


@dataclass(frozen=True)
class DeviceTally:
    """How many devices share a hardware class, an active model and a liveness state."""

    hardware_class: str
    active_model: str          # "" when nothing is active yet
    liveness: str              # online | late | offline
    devices: int


@dataclass(frozen=True)
class DeviceProfile:
    """What planning a deployment reads of a device (the variant choice's inputs), without
    the rest of the record."""

    device_id: str
    hardware_class: str
    backends: Sequence[str]
    group: str


@dataclass(frozen=True)
class DeviceIdentity:
    """The key a device enrolled with (ADR 0005) and whether the operator approved a
    re-provisioning: the next enrollment of this id may then bring a new key."""

    device_id: str
    public_key_pem: str
    certificate_sha256: str
    issued_at: float
    reprovision_approved_at: float | None = None


@dataclass(frozen=True)
class EnrollToken:
    """An operator-made enrollment token (stored hashed): optional group, expiry and uses."""

    token_sha256: str
    name: str                 # shown to operators: "et-" + the first hex digits of the hash
    group: str                # "" : the device chooses (or none)
    created_at: float
    expires_at: float | None  # None: never
    uses_left: int | None     # None: unlimited


@dataclass(frozen=True)
class Deployment:
    deployment_id: str
    model: str
    version: str
    target: str
    status: str  # active | succeeded | failed | partial | cancelled | reverted
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class DeploymentDevice:
    deployment_id: str
    device_id: str
    variant: str
    sha256: str
    state: str
    outcome: str  # "" until final: installed | failed | rolled_back | cancelled | superseded | reverted
    reason: str
    updated_at: float
    previous: Mapping[str, Any] | None  # the assignment the device had before, as stored


@dataclass(frozen=True)
class Assignment:
    """What a device is told to run now (the director's input), as a JSON-able document."""

    device_id: str
    deployment_id: str
    document: Mapping[str, Any]


@dataclass(frozen=True)
class Rollout:
    """A staged rollout (fleetcast.server.rollouts): `spec` is the operator's options as
    given, `revision` grows by one with every save (the store's compare-and-set)."""

    rollout_id: str
    model: str
    version: str
    target: str
    deployment_id: str      # the one deployment each stage's wave of devices joins
    state: str              # rollouts.table.RolloutState
    stage: int              # index of the current stage
    spec: Mapping[str, Any]
    created_at: float
    updated_at: float
    revision: int = 0


@dataclass(frozen=True)
class RolloutStage:
    rollout_id: str
    index: int
    size: str               # as the operator wrote it: "10%", "5"
    state: str              # rollouts.table.StageState
    started_at: float | None = None
    soak_started_at: float | None = None
    ended_at: float | None = None
    results: Sequence[Mapping[str, Any]] = ()   # the latest gate results, per cohort and check


@dataclass(frozen=True)
class RolloutDevice:
    rollout_id: str
    device_id: str
    stage: int
    cohort: str
    variant: str
    state: str              # assigned | downloading | verifying | activating | serving | failed | timed_out
    #                         | rolled_back (by its agent's trial) | reverted (sent back) | held (cohort held back)
    reason: str = ""
    assigned_at: float | None = None
    updated_at: float = 0.0


@dataclass(frozen=True)
class RolloutLogEntry:
    """One line of a rollout's append-only log: who did what, why, and the numbers."""

    rollout_id: str
    at: float
    actor: str              # "operator" | "scheduler"
    event: str              # a rollouts.table event
    from_state: str
    to_state: str
    reason: str = ""
    snapshot: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StatsRow:
    model: str
    version: str
    variant: str
    inferences: int
    errors: int
    latency_sum_ms: float
    histogram: Sequence[int]
    backend: str = ""   # the back end that served (ModelStats.backend); "" when not reported


@dataclass(frozen=True)
class TelemetryBatch:
    """One device's batch as the store counts it: once per (device_id, batch_id)."""

    device_id: str
    batch_id: str
    rows: Sequence[StatsRow]


@dataclass(frozen=True)
class Aggregate:
    device_id: str
    model: str
    version: str
    variant: str
    inferences: int
    errors: int
    latency_sum_ms: float
    histogram: Sequence[int]


# Telemetry over time: each stored batch is also added to the window of the minute the
# server stored it (arrival time, never the device's clock), once per device (kept
# DEVICE_WINDOW_RETENTION_S: what rollout gates and a device's page read) and once per
# cohort without the device (kept SERIES_RETENTION_S: the fleet's plots over a day).
WINDOW_S: Final = 60
DEVICE_WINDOW_RETENTION_S: Final = 6 * 3600
SERIES_RETENTION_S: Final = 8 * 86400


@dataclass(frozen=True)
class WindowRow:
    """One device's serving of one model variant in one window (`minute` = arrival // 60)."""

    device_id: str
    model: str
    version: str
    variant: str
    backend: str
    minute: int
    inferences: int
    errors: int
    latency_sum_ms: float
    histogram: Sequence[int]


@dataclass(frozen=True)
class SeriesRow:
    """The fleet's serving of one model variant on one hardware class and back end in one
    window: the per-device windows summed, kept longer."""

    model: str
    version: str
    variant: str
    hardware_class: str
    backend: str
    minute: int
    inferences: int
    errors: int
    latency_sum_ms: float
    histogram: Sequence[int]


UNKNOWN_HARDWARE: Final = "unknown"   # telemetry of a device that is not (or no longer) enrolled


@dataclass(frozen=True)
class FleetAggregate:
    """The cumulative figures of every device of one hardware class for one model variant
    on one back end, summed (bucket counts added): what /metrics exports, no device id in it."""

    model: str
    version: str
    variant: str
    hardware_class: str       # "unknown" for telemetry of a device no longer enrolled
    backend: str              # the back end that served ("" when not reported)
    inferences: int
    errors: int
    latency_sum_ms: float
    histogram: Sequence[int]


class Store(Protocol):
    # signing's MetadataStore
    def get_metadata(self, repository: str, name: str) -> bytes | None: ...
    def put_metadata(self, repository: str, name: str, data: bytes) -> None: ...
    # Drops versioned snapshot, targets and bin files whose role has a newer version written
    # before `superseded_before` (roots and timestamps are never dropped: clients walk the
    # root chain, and timestamp.json is rewritten in place); returns how many went.
    def prune_metadata(self, *, superseded_before: float) -> int: ...

    def close(self) -> None: ...

    # Coordination between every store instance on one database (every replica):
    # `exclusive(name)` holds a lock named `name` for the block, re-entrant in one thread.
    # `announce(topic, *details)` tells the listeners `subscribe` registered on *other*
    # store instances, in commit order; put_metadata announces ("metadata",
    # "REPOSITORY\nNAME") itself, in its own transaction. A listener is called from a
    # store thread; topic "" means notices may have been missed: assume anything changed.
    # SQLite serves one process, so it has no other instances to tell.
    def exclusive(self, name: str) -> AbstractContextManager[None]: ...
    def announce(self, topic: str, *details: str) -> None: ...   # one notice per detail, in one transaction
    def subscribe(self, listener: Callable[[str, str], None]) -> None: ...

    # models
    def add_artifact(self, artifact: Artifact) -> None: ...
    def artifact(self, sha256: str) -> Artifact | None: ...
    # Version names are allocated atomically here, never in the process: `reserve_version`
    # takes a name (None: the next integer after every recorded or reserved one) or returns
    # None when it is taken; `add_version` records a reserved name (and ends the reservation);
    # `release_version` gives an unused reservation back.
    def reserve_version(self, model: str, version: str | None, *, at: float) -> str | None: ...
    def release_version(self, model: str, version: str) -> None: ...
    def add_version(self, version: ModelVersion) -> None: ...
    def add_variant(self, model: str, version: str, variant: Variant) -> None: ...
    def set_compression(self, model: str, version: str, compression: Mapping[str, Any]) -> None: ...
    def version(self, model: str, version: str) -> ModelVersion | None: ...
    def latest_version(self, model: str) -> ModelVersion | None: ...
    def versions(self, model: str) -> list[ModelVersion]: ...
    def models(self) -> list[tuple[str, str, int]]: ...  # (name, latest version, count)

    # devices
    def put_device(self, device: Device) -> None: ...
    def device(self, device_id: str) -> Device | None: ...
    def device_by_token(self, token_sha256: str) -> Device | None: ...
    # by device id (bytewise); a page: the `limit` devices after device id `after`
    def devices(self, *, group: str | None = None, after: str = "", limit: int | None = None) -> list[Device]: ...
    def device_profiles(self, *, group: str | None = None) -> list[DeviceProfile]: ...  # what planning reads
    def record_report(self, device_id: str, *, at: float, state: str, active_model: str, deployment_id: str,
                      error: str = "") -> None: ...
    def touch_device(self, device_id: str, at: float) -> None: ...
    def touch_devices(self, device_ids: Sequence[str], at: float) -> None: ...  # one write for many
    # the device table, paged and filtered by the store (SQL: WHERE, ORDER BY, LIMIT/OFFSET, COUNT)
    def find_devices(self, query: DeviceQuery) -> DevicePage: ...
    # devices counted by (hardware class, active model, liveness): online when last_seen >=
    # online_since, late when >= late_since, else (or never seen) offline; GROUP BY in SQL
    def device_tally(self, *, online_since: float, late_since: float) -> list[DeviceTally]: ...

    # device identity (ADR 0005)
    def device_identity(self, device_id: str) -> DeviceIdentity | None: ...
    def put_device_identity(self, identity: DeviceIdentity) -> None: ...
    def add_enroll_token(self, token: EnrollToken) -> None: ...
    def use_enroll_token(self, token_sha256: str, at: float) -> EnrollToken | None: ...
    # ^ atomically: None when unknown, expired or used up; else one use is taken
    def enroll_tokens(self) -> list[EnrollToken]: ...

    # deployments
    def add_deployment(self, deployment: Deployment, devices: Sequence[DeploymentDevice]) -> None: ...
    def add_deployment_devices(self, devices: Sequence[DeploymentDevice]) -> None: ...
    def deployment(self, deployment_id: str) -> Deployment | None: ...
    def deployments(self, *, limit: int = 200) -> list[Deployment]: ...
    # ordered by device id (bytewise); a page: the `limit` rows after device id `after`
    def deployment_devices(self, deployment_id: str, *, after: str = "",
                           limit: int | None = None) -> list[DeploymentDevice]: ...
    def deployment_device(self, deployment_id: str, device_id: str) -> DeploymentDevice | None: ...
    def update_deployment_device(
        self, deployment_id: str, device_id: str, *, state: str, outcome: str, reason: str, at: float
    ) -> None: ...
    def open_rows_of(self, device_id: str) -> list[DeploymentDevice]: ...
    # one device's rows over all deployments, newest first: its slot history
    def device_deployments(self, device_id: str, *, limit: int = 50) -> list[DeploymentDevice]: ...
    # devices per outcome ('' = pending), kept up to date with every row change
    def deployment_counts(self, deployment_id: str) -> dict[str, int]: ...
    def close_open_rows(self, device_ids: Sequence[str], *, outcome: str, reason: str, at: float,
                        keep: str = "") -> list[str]: ...   # returns the deployments touched
    # open rows of active deployments not yet assigned to their device, oldest first;
    # `previous` is not read (None): signing does not need it
    def unsigned_rows(self, *, limit: int) -> list[DeploymentDevice]: ...
    def assignments_of(self, device_ids: Sequence[str]) -> dict[str, Assignment]: ...
    def set_deployment_status(self, deployment_id: str, status: str, at: float) -> None: ...
    def assignment(self, device_id: str) -> Assignment | None: ...
    def set_assignment(self, device_id: str, assignment: Assignment | None) -> None: ...
    # many devices' assignments in one transaction (what one director publish signed)
    def set_assignments(self, assignments: Sequence[Assignment]) -> None: ...
    # operator pins per model: scope ("group:G" | "hardware:CLASS") -> variant
    def pins(self, model: str) -> dict[str, str]: ...
    def set_pin(self, model: str, scope: str, variant: str | None) -> None: ...

    # rollouts: saved whole, each save one transaction guarded by the revision it read
    def add_rollout(self, rollout: Rollout, stages: Sequence[RolloutStage], devices: Sequence[RolloutDevice],
                    entry: RolloutLogEntry) -> None: ...
    def rollout(self, rollout_id: str) -> Rollout | None: ...
    def rollouts(self, *, limit: int = 200, states: Sequence[str] | None = None) -> list[Rollout]: ...
    def rollout_stages(self, rollout_id: str) -> list[RolloutStage]: ...
    def rollout_devices(self, rollout_id: str) -> list[RolloutDevice]: ...
    def rollout_log(self, rollout_id: str) -> list[RolloutLogEntry]: ...
    # writes rollout (its revision must be the stored one + 1), the stages and devices given
    # (upserts) and appends the log entries; False, writing nothing, when another save won
    def save_rollout(self, rollout: Rollout, *, stages: Sequence[RolloutStage] = (),
                     devices: Sequence[RolloutDevice] = (), entries: Sequence[RolloutLogEntry] = ()) -> bool: ...

    # telemetry
    def ingest_telemetry(self, device_id: str, batch_id: str, rows: Sequence[StatsRow], at: float) -> bool: ...
    # many batches in one transaction; one flag per batch, True for a duplicate
    def ingest_telemetry_many(self, batches: Sequence[TelemetryBatch], at: float) -> list[bool]: ...
    def aggregates(self, *, device_id: str | None = None) -> list[Aggregate]: ...
    # the aggregates summed per (model, version, variant, hardware class, back end), in that order
    def fleet_aggregates(self) -> list[FleetAggregate]: ...
    # windows with since <= minute * WINDOW_S <= until (None: now), one row per window;
    # `device_ids` narrows to those devices (None: all)
    def window_rows(self, model: str, *, since: float, until: float | None = None,
                    device_ids: Sequence[str] | None = None) -> list[WindowRow]: ...
    def series_rows(self, model: str, *, since: float, until: float | None = None) -> list[SeriesRow]: ...
    # drops device windows older than `devices_before` and series older than `series_before`
    def prune_windows(self, *, devices_before: float, series_before: float) -> int: ...
