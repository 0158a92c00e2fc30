"""Typed, read-only views of the server's JSON documents (see the REST table in
docs/architecture.md). Each keeps the document it came from in `raw`, which is what
`--json` prints, so fields the SDK does not model yet are never lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

JsonDoc = Mapping[str, Any]

# A device's outcome is "" or null until it is final (installed, failed, rolled_back,
# cancelled, superseded); these are the ones that count as failures.
FAILED_OUTCOMES: Final[frozenset[str]] = frozenset({"failed", "rolled_back"})
# Deployment statuses after which nothing changes any more ("active" is the other one).
FINAL_DEPLOYMENT_STATES: Final[frozenset[str]] = frozenset({"succeeded", "failed", "partial", "cancelled", "reverted"})


@dataclass(frozen=True)
class Variant:
    """One build of a model version: its format, bytes and measured metrics."""

    variant: str
    format: str
    sha256: str
    length: int
    metrics: Mapping[str, Any]

    @classmethod
    def from_json(cls, doc: JsonDoc) -> Variant:
        return cls(
            variant=str(doc["variant"]),
            format=str(doc.get("format", "")),
            sha256=str(doc.get("sha256", "")),
            length=int(doc.get("length", 0)),
            metrics=dict(doc.get("metrics") or {}),
        )


@dataclass(frozen=True)
class ModelVersion:
    """One uploaded version of a model with its variants."""

    name: str
    version: str
    created_at: str | float | None
    variants: tuple[Variant, ...]
    inputs: Any
    outputs: Any
    raw: JsonDoc = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: JsonDoc) -> ModelVersion:
        return cls(
            name=str(doc["name"]),
            version=str(doc["version"]),
            created_at=doc.get("created_at"),
            variants=tuple(Variant.from_json(v) for v in doc.get("variants") or ()),
            inputs=doc.get("inputs"),
            outputs=doc.get("outputs"),
            raw=doc,
        )

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.variant == name), None)

    @property
    def compression(self) -> Mapping[str, Any] | None:
        """`{"status": "running"|"done"|"failed", "levels": [{"level", "error"}], "notes": [...]}`,
        None when the version was pushed without levels."""
        value = self.raw.get("compression")
        return value if isinstance(value, dict) else None

    @property
    def compression_status(self) -> str | None:
        return None if self.compression is None else str(self.compression.get("status"))


@dataclass(frozen=True)
class ModelSummary:
    """A line of `GET /v1/models`."""

    name: str
    latest_version: str | None
    versions: int
    raw: JsonDoc = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: JsonDoc) -> ModelSummary:
        latest = doc.get("latest_version")
        return cls(
            name=str(doc["name"]),
            latest_version=None if latest is None else str(latest),
            versions=int(doc.get("versions") or 0),
            raw=doc,
        )


@dataclass(frozen=True)
class Model:
    """A model with all its versions, oldest first as the server lists them."""

    name: str
    versions: tuple[ModelVersion, ...]
    raw: JsonDoc = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: JsonDoc) -> Model:
        return cls(
            name=str(doc["name"]),
            versions=tuple(ModelVersion.from_json(v) for v in doc.get("versions") or ()),
            raw=doc,
        )


@dataclass(frozen=True)
class DeviceOutcome:
    """Where one device stands in a deployment."""

    device_id: str
    state: str | None
    outcome: str | None
    reason: str | None
    updated_at: str | float | None

    @classmethod
    def from_json(cls, doc: JsonDoc) -> DeviceOutcome:
        return cls(
            device_id=str(doc["device_id"]),
            state=doc.get("state"),
            outcome=doc.get("outcome"),
            reason=doc.get("reason"),
            updated_at=doc.get("updated_at"),
        )

    @property
    def final(self) -> bool:
        return bool(self.outcome)

    @property
    def failed(self) -> bool:
        return self.outcome in FAILED_OUTCOMES


@dataclass(frozen=True)
class Deployment:
    """A deployment of one model version to a set of devices."""

    id: str
    model: str
    version: str | None
    target: str | None
    state: str | None
    created_at: str | float | None
    devices: tuple[DeviceOutcome, ...]
    counts: Mapping[str, int]
    raw: JsonDoc = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: JsonDoc) -> Deployment:
        version = doc.get("version")
        return cls(
            id=str(doc["id"]),
            model=str(doc.get("model", "")),
            version=None if version is None else str(version),
            target=doc.get("target"),
            state=doc.get("status"),
            created_at=doc.get("created_at"),
            devices=tuple(DeviceOutcome.from_json(d) for d in doc.get("devices") or ()),
            counts=dict(doc.get("counts") or {}),
            raw=doc,
        )

    @property
    def total(self) -> int:
        """Devices in the deployment (`devices` holds their rows only when they were asked for)."""
        return int(self.counts.get("total", len(self.devices)))

    @property
    def pending(self) -> int:
        """Devices without a final outcome yet."""
        if "pending" in self.counts:
            return int(self.counts["pending"])
        return sum(1 for d in self.devices if not d.final)

    @property
    def finished(self) -> bool:
        """Every device has a final outcome (or the deployment itself has ended)."""
        return self.state in FINAL_DEPLOYMENT_STATES or self.pending == 0

    @property
    def failed_devices(self) -> tuple[DeviceOutcome, ...]:
        return tuple(d for d in self.devices if d.failed)


@dataclass(frozen=True)
class VersionStats:
    """Serving statistics of one model version on one device."""

    model: str | None
    version: str | None
    inferences: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    variant: str | None = None  # None: summed over the version's variants

    @classmethod
    def from_json(cls, doc: JsonDoc) -> VersionStats:
        version = doc.get("version")
        return cls(
            model=doc.get("model"),
            version=None if version is None else str(version),
            inferences=int(doc.get("inferences") or 0),
            errors=int(doc.get("errors") or 0),
            p50_ms=_float(doc.get("p50_ms")),
            p95_ms=_float(doc.get("p95_ms")),
            p99_ms=_float(doc.get("p99_ms")),
            variant=doc.get("variant"),
        )


@dataclass(frozen=True)
class Device:
    """An enrolled device, what it runs and how that is serving."""

    id: str
    hardware_class: str | None
    backends: tuple[str, ...]
    group: str | None
    last_seen: str | float | None
    active_model: str | None
    active_version: str | None
    state: str | None
    stats: tuple[VersionStats, ...]
    raw: JsonDoc = field(repr=False, compare=False)
    liveness: str | None = None          # online | late | offline (None from servers before liveness)
    serving: VersionStats | None = None  # the active version's own figures, from the server

    @classmethod
    def from_json(cls, doc: JsonDoc) -> Device:
        name, _, version = str(doc.get("active_model") or "").partition("@")   # "model@version"
        return cls(
            id=str(doc["id"]),
            hardware_class=doc.get("hardware_class"),
            backends=tuple(str(b) for b in doc.get("backends") or ()),
            group=doc.get("group"),
            last_seen=doc.get("last_seen"),
            active_model=name or None,
            active_version=version or None,
            state=doc.get("state"),
            stats=tuple(VersionStats.from_json(s) for s in doc.get("telemetry") or ()),
            raw=doc,
            liveness=(doc.get("liveness") or {}).get("state"),
            serving=VersionStats.from_json(doc["serving"]) if doc.get("serving") else None,
        )

    @property
    def active_stats(self) -> VersionStats | None:
        """The figures of the active model version only; None until that version reports.

        Never another version's figures: a device that just updated shows nothing
        rather than the latency of the version it replaced.
        """
        if self.serving is not None:
            return self.serving
        mine = [s for s in self.stats if s.model == self.active_model and s.version == self.active_version]
        return mine[0] if len(mine) == 1 else None  # several variants: only the server can merge them

    @property
    def inferences(self) -> int | None:
        """Inferences of the active version (None when it has no figures yet)."""
        stats = self.active_stats
        return None if stats is None else stats.inferences

    @property
    def errors(self) -> int | None:
        """Failed inferences of the active version (None when it has no figures yet)."""
        stats = self.active_stats
        return None if stats is None else stats.errors


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# Rollout states after which nothing changes any more (ADR 0007).
FINAL_ROLLOUT_STATES: Final[frozenset[str]] = frozenset({"completed", "aborted", "rolled_back"})


@dataclass(frozen=True)
class Rollout:
    """A staged rollout: its state, its stages and every gate check's numbers (in `raw`)."""

    id: str
    model: str
    version: str
    target: str
    state: str
    stage: int
    healthy: bool
    stages: tuple[JsonDoc, ...]
    raw: JsonDoc = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: JsonDoc) -> Rollout:
        return cls(id=str(doc["id"]), model=str(doc.get("model", "")), version=str(doc.get("version", "")),
                   target=str(doc.get("target", "")), state=str(doc.get("state", "")), stage=int(doc.get("stage", 0)),
                   healthy=bool(doc.get("healthy", False)), stages=tuple(doc.get("stages") or ()), raw=doc)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_ROLLOUT_STATES
