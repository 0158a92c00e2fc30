"""What a stored row becomes, and the sums a telemetry flush adds up: shared by both stores.

Both stores keep the same column names, and JSON documents (backends, labels, a
deployment row's previous assignment) as text, so one function per record reads a
row of either (`sqlite3.Row` or psycopg's dict rows). Histograms are the exception:
both keep one integer column per bucket (`BUCKET_COLUMNS`, ADR 0009), which each store's
telemetry module gathers into a list before these functions see it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from fleetcast.proto import telemetry as buckets
from fleetcast.server.store import (
    WINDOW_S,
    Deployment,
    DeploymentDevice,
    Device,
    EnrollToken,
    Rollout,
    RolloutLogEntry,
    RolloutStage,
    SeriesRow,
    StatsRow,
    WindowRow,
)

Row = Mapping[str, Any]

# Signed metadata files a newer version of the same role replaces. Roots are not among
# them (a client walks the root chain from the version it trusts), nor timestamp.json
# (rewritten in place).
_REPLACEABLE = re.compile(r"^(\d{1,10})\.(snapshot|targets|bin-[0-9a-f]{2})\.json$")

# Both stores keep the role and version of each replaceable file beside it, and when it
# was written: a file goes once a newer version of its role was written before the cutoff
# (a client reads the snapshot and targets a timestamp names within moments of reading it).
PRUNE_METADATA_SQL = (
    "DELETE FROM metadata WHERE role IS NOT NULL AND EXISTS (SELECT 1 FROM metadata AS newer"
    " WHERE newer.repository = metadata.repository AND newer.role = metadata.role"
    " AND newer.version > metadata.version AND newer.written_at < {cutoff})")


def metadata_role(name: str) -> tuple[str, int] | tuple[None, None]:
    """The (role, version) of a file name a newer version replaces; (None, None) otherwise."""
    m = _REPLACEABLE.fullmatch(name)
    return (m.group(2), int(m.group(1))) if m else (None, None)
# The telemetry tables' histogram columns, one per bucket of fleetcast.proto.telemetry.
# Persisted names: never renamed; another bucket layout would be a new migration.
BUCKET_COLUMNS: Final = tuple(f"h{i}" for i in range(buckets.BUCKETS))


def rollout(row: Row) -> Rollout:
    return Rollout(rollout_id=row["rollout_id"], model=row["model"], version=row["version"], target=row["target"],
                   deployment_id=row["deployment_id"], state=row["state"], stage=row["stage"],
                   spec=json.loads(row["spec"]), created_at=row["created_at"], updated_at=row["updated_at"],
                   revision=row["revision"])


def rollout_stage(row: Row) -> RolloutStage:
    return RolloutStage(rollout_id=row["rollout_id"], index=row["idx"], size=row["size"], state=row["state"],
                        started_at=row["started_at"], soak_started_at=row["soak_started_at"],
                        ended_at=row["ended_at"], results=json.loads(row["results"]))


def rollout_log_entry(row: Row) -> RolloutLogEntry:
    return RolloutLogEntry(rollout_id=row["rollout_id"], at=row["at"], actor=row["actor"], event=row["event"],
                           from_state=row["from_state"], to_state=row["to_state"], reason=row["reason"],
                           snapshot=json.loads(row["snapshot"]))


def device(row: Row) -> Device:
    return Device(
        device_id=row["device_id"], token_sha256=row["token_sha256"], hardware_class=row["hardware_class"],
        backends=tuple(json.loads(row["backends"])), group=row["grp"], labels=json.loads(row["labels"]),
        agent_version=row["agent_version"], enrolled_at=row["enrolled_at"], last_seen=row["last_seen"],
        active_model=row["active_model"], state=row["state"], deployment_id=row["deployment_id"],
        last_error=row["last_error"], last_error_at=row["last_error_at"],
    )


def enroll_token(row: Row) -> EnrollToken:
    return EnrollToken(token_sha256=row["token_sha256"], name=row["name"], group=row["grp"],
                       created_at=row["created_at"], expires_at=row["expires_at"], uses_left=row["uses_left"])


def deployment(row: Row) -> Deployment:
    return Deployment(deployment_id=row["deployment_id"], model=row["model"], version=row["version"],
                      target=row["target"], status=row["status"], created_at=row["created_at"],
                      updated_at=row["updated_at"])


def deployment_device(row: Row) -> DeploymentDevice:
    return DeploymentDevice(
        deployment_id=row["deployment_id"], device_id=row["device_id"], variant=row["variant"], sha256=row["sha256"],
        state=row["state"], outcome=row["outcome"], reason=row["reason"], updated_at=row["updated_at"],
        previous=json.loads(row["previous"]) if row["previous"] else None,
    )


def window_row(row: Row, histogram: Sequence[int]) -> WindowRow:
    return WindowRow(device_id=row["device_id"], model=row["model"], version=row["version"], variant=row["variant"],
                     backend=row["backend"], minute=row["minute"], inferences=row["inferences"],
                     errors=row["errors"], latency_sum_ms=row["latency_sum_ms"], histogram=histogram)


def series_row(row: Row, histogram: Sequence[int]) -> SeriesRow:
    return SeriesRow(model=row["model"], version=row["version"], variant=row["variant"],
                     hardware_class=row["hardware_class"], backend=row["backend"], minute=row["minute"],
                     inferences=row["inferences"], errors=row["errors"], latency_sum_ms=row["latency_sum_ms"],
                     histogram=histogram)


def minutes(since: float, until: float | None) -> tuple[int, int]:
    """The first and last window of [since, until] (None: now)."""
    return int(since // WINDOW_S), int((time.time() if until is None else until) // WINDOW_S)


class Sums:
    """Counts being summed for one row of a telemetry table before it is written. The
    histogram of a key's first row is kept as given (most keys of a flush have one row)
    and copied only when a second row is added to it."""

    __slots__ = ("inferences", "errors", "latency_sum_ms", "histogram", "_owned")

    def __init__(self, histogram: Sequence[int] | None = None) -> None:
        self.inferences = self.errors = 0
        self.latency_sum_ms = 0.0
        self._owned = histogram is None
        self.histogram: Sequence[int] = buckets.empty() if histogram is None else histogram

    def add(self, r: StatsRow | Sums) -> None:
        if not self._owned:
            self.histogram, self._owned = list(self.histogram), True
        buckets.merge(self.histogram, r.histogram)   # type: ignore[arg-type]  # owned: a list
        self.inferences += r.inferences
        self.errors += r.errors
        self.latency_sum_ms += r.latency_sum_ms


def add(into: dict[tuple[Any, ...], Sums], key: tuple[Any, ...], r: StatsRow | Sums) -> None:
    acc = into.get(key)
    if acc is not None:
        acc.add(r)
        return
    if len(r.histogram) != buckets.BUCKETS:
        raise ValueError(f"histogram has {len(r.histogram)} buckets, expected {buckets.BUCKETS}")
    acc = into[key] = Sums(r.histogram)   # shared until a second row comes: see Sums
    acc.inferences = r.inferences
    acc.errors = r.errors
    acc.latency_sum_ms = r.latency_sum_ms
