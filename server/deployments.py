"""Deployments: resolve a target to devices, sign each device's director, follow reports.

Creating a deployment records it and one row per device in one go and returns; each
device's director metadata is then signed by `sign_pending` (run in the background by
the server's assigner) and the device is told as soon as its own assignment is ready.
Rows still unsigned are found again from the store after a restart.

Per-device state is what the device last reported; a final report sets the outcome
(installed, failed, rolled_back). A deployment's status follows from its devices:

| devices                          | status    |
|----------------------------------|-----------|
| any still without an outcome     | active    |
| all installed                    | succeeded |
| none installed                   | failed    |
| some installed, some not         | partial   |
| cancelled by the operator        | cancelled (kept) |
| undone by the operator           | reverted (kept)  |

Cancelling gives every device not yet final its previous assignment back (or clears
it). A newer deployment to a device closes its open row in older ones as "superseded".
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from fleetcast.proto.topics import AssignmentNotice
from fleetcast.server import choice
from fleetcast.server.errors import DeploymentNotFound, DeviceNotFound, IllegalTransition, InvalidRequest, TargetEmpty
from fleetcast.server.fleet import NAME
from fleetcast.server.notify import Hub, check_window_ms
from fleetcast.server.registry import Registry
from fleetcast.server.signing import DirectorAssignment, GoldenRef, Signer, artifact_path
from fleetcast.server.store import Assignment, Deployment, DeploymentDevice, Device, DeviceProfile, ModelVersion, Store

logger = logging.getLogger(__name__)

OUTCOMES: Final = frozenset({"installed", "failed", "rolled_back"})
MAX_TARGET_DEVICES: Final = 10_000
MAX_REASON_CHARS: Final = 1024


@dataclass(frozen=True)
class StatusUpdate:
    """One step a device reports (the fields of StatusReport the server keeps)."""

    deployment_id: str
    state: str
    event: str = ""
    reason: str = ""
    active_model: str = ""
    final: bool = False
    outcome: str = ""

    @classmethod
    def from_message(cls, m: Any) -> "StatusUpdate":
        return cls(deployment_id=m.deployment_id, state=m.state, event=m.event, reason=m.reason,
                   active_model=m.active_model, final=m.final, outcome=m.outcome)

    def check(self) -> "StatusUpdate":
        if len(self.deployment_id) > 128 or len(self.state) > 32 or len(self.event) > 32:
            raise InvalidRequest("status report: deployment_id, state or event is too long (128/32/32 characters)")
        if len(self.active_model) > 200:
            raise InvalidRequest("status report: active_model is longer than 200 characters")
        if self.final and self.outcome not in OUTCOMES:
            raise InvalidRequest(f"a final status report needs an outcome in {sorted(OUTCOMES)}, not {self.outcome[:40]!r}")
        return self


@dataclass(frozen=True)
class TargetPlan:
    """A target resolved: the release, its devices and the variant each one gets."""

    release: ModelVersion
    target: str
    devices: Sequence[Device | DeviceProfile]
    choices: Mapping[str, choice.Choice]   # device id -> variant, in target order


def status_from(counts: Mapping[str, int]) -> str:
    """The status from the devices per outcome ('' counts those still pending)."""
    total = sum(counts.values())
    if counts.get("", 0) > 0:
        return "active"
    installed = counts.get("installed", 0)
    if installed == total:
        return "succeeded"
    return "failed" if installed == 0 else "partial"


def assignment_document(a: DirectorAssignment, why: str = "") -> dict[str, Any]:
    """The stored assignment; `why` (the variant choice's reason) is kept beside it, never signed."""
    return {**asdict(a), **({"why": why} if why else {})}


def assignment_from(doc: Mapping[str, Any]) -> DirectorAssignment:
    golden = doc.get("golden")
    fields = {k: v for k, v in doc.items() if k != "why"}
    return DirectorAssignment(**{**fields, "golden": GoldenRef(**golden) if golden else None})


class Deployments:
    def __init__(self, *, store: Store, signer: Signer, registry: Registry, hub: Hub,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.signer = signer
        self.registry = registry
        self.hub = hub
        self.clock = clock
        self._why: dict[tuple[str, str], str] = {}   # (deployment, device) -> why, until assigned
        self.on_created: Callable[[], None] = lambda: None    # the assigner's wake-up

    # -- create -------------------------------------------------------------------------
    def resolve_target(self, target: str) -> list[Device]:
        kind, _, rest = target.partition(":")
        if target == "all":
            devices = self.store.devices()
        elif kind == "group" and NAME.fullmatch(rest):
            devices = self.store.devices(group=rest)
        elif kind == "device" and rest:
            ids = list(dict.fromkeys(i.strip() for i in rest.split(",") if i.strip()))
            if len(ids) > MAX_TARGET_DEVICES:
                raise InvalidRequest(f"target names {len(ids)} devices; at most {MAX_TARGET_DEVICES}")
            devices = []
            for device_id in ids:
                found = self.store.device(device_id) if NAME.fullmatch(device_id) else None
                if found is None:
                    raise DeviceNotFound(f"device {device_id[:80]!r} in the target is not enrolled: check GET /v1/devices")
                devices.append(found)
        else:
            raise InvalidRequest(
                f"target {target[:80]!r} is not valid: use 'all', 'group:NAME' or 'device:ID[,ID...]'"
            )
        if not devices:
            raise TargetEmpty(f"target {target!r} matches no enrolled device: enroll devices or choose another target")
        return devices

    def _profiles(self, target: str) -> list[Device | DeviceProfile]:
        """The targeted devices' planning profiles; the whole fleet (or a group) without
        parsing every device record."""
        kind, _, rest = target.partition(":")
        found: list[Device | DeviceProfile] | None = None
        if target == "all":
            found = list(self.store.device_profiles())
        elif kind == "group" and NAME.fullmatch(rest):
            found = list(self.store.device_profiles(group=rest))
        if found is None:
            return list(self.resolve_target(target))
        if not found:
            raise TargetEmpty(f"target {target!r} matches no enrolled device: enroll devices or choose another target")
        return found

    def plan(self, *, model: str, version: str | None, target: str) -> TargetPlan:
        """The release, the targeted devices and each one's variant, without recording anything."""
        release = self.registry.version(model, version)
        devices = self._profiles(target)
        choose = self._chooser(release)
        return TargetPlan(release=release, target=target, devices=tuple(devices),
                          choices={d.device_id: choose(d) for d in devices})

    def create(self, *, model: str, version: str | None, target: str, wake: bool = True) -> Deployment:
        """Records the deployment and one unsigned row per device; `wake` tells the assigner
        at once (the REST handler passes False and wakes it once its answer is written)."""
        planned = self.plan(model=model, version=version, target=target)
        deployment = self.new_deployment(planned.release, target=target)
        self.assign_wave(deployment, planned.release, planned.choices, wake=wake)
        logger.info("deployment created deployment=%s model=%s version=%s devices=%d",
                    deployment.deployment_id, planned.release.model, planned.release.version, len(planned.devices))
        return deployment

    def new_deployment(self, release: ModelVersion, *, target: str) -> Deployment:
        """A deployment not yet recorded: `assign_wave` records it with its first devices."""
        now = self.clock()
        return Deployment(deployment_id=f"dep-{secrets.token_hex(8)}", model=release.model, version=release.version,
                          target=target, status="active", created_at=now, updated_at=now)

    def assign_wave(self, deployment: Deployment, release: ModelVersion,
                    choices: Mapping[str, choice.Choice], *, wake: bool = True) -> None:
        """Assigns one wave of devices (device id -> its variant) to `deployment`, recording the
        deployment itself with its first wave; the assigner then signs each director. A
        device's open row in any other deployment closes as superseded."""
        now = self.clock()
        ids = list(choices)
        previous = self.store.assignments_of(ids)
        rows = []
        for device_id, chosen in choices.items():
            self._why[(deployment.deployment_id, device_id)] = chosen.why
            rows.append(DeploymentDevice(
                deployment_id=deployment.deployment_id, device_id=device_id, variant=chosen.variant.variant,
                sha256=chosen.variant.sha256, state="assigned", outcome="", reason="", updated_at=now,
                previous=prev.document if (prev := previous.get(device_id)) else None,
            ))
        touched = self.store.close_open_rows(ids, outcome="superseded", reason="a newer deployment replaced this one",
                                             at=now, keep=deployment.deployment_id)
        if self.store.deployment(deployment.deployment_id) is None:
            self.store.add_deployment(deployment, rows)
        else:
            self.store.add_deployment_devices(rows)
            self._refresh_status(deployment.deployment_id, now)
        for deployment_id in touched:
            self._refresh_status(deployment_id, now)
        if wake:
            self.on_created()

    def sign_pending(self, *, limit: int = 10_000) -> int:
        """Signs the director entries of up to `limit` devices whose assignment is not signed
        yet, in one publish, then tells each; returns how many rows were read (0: none left)."""
        # Read under the lock that cancelling takes too (on every replica: the store's lock),
        # so no row read here closes before it is signed by a cancel, and no other replica
        # signs it meanwhile; a row superseded meanwhile is signed and then replaced.
        with self.signer.locked():
            rows = self.store.unsigned_rows(limit=limit)
            plans: dict[tuple[str, str], DirectorAssignment] = {}   # one per deployment and variant
            planned: dict[str, DirectorAssignment] = {}
            for row in rows:
                key = (row.deployment_id, row.variant)
                if key not in plans:
                    deployment = self.store.deployment(row.deployment_id)
                    if deployment is None:
                        continue
                    release = self.registry.version(deployment.model, deployment.version)
                    plans[key] = _planned(row.deployment_id, release, row.variant)
                planned[row.device_id] = plans[key]
            self._assign_many(planned)
        return len(rows)

    def join(self, device_id: str) -> Deployment | None:
        """Gives a device that enrolled with nothing assigned the newest deployment aimed at
        all devices or at its group (not cancelled), as if it had been enrolled when that
        deployment was created; returns that deployment, or None."""
        device = self.store.device(device_id)
        if device is None or self.store.assignment(device_id) is not None:
            return None
        targets = {"all"} | ({f"group:{device.group}"} if device.group else set())
        newest = next((d for d in self.store.deployments()
                       if d.target in targets and d.status not in {"cancelled", "reverted"}), None)
        if newest is None:
            return None
        release = self.registry.version(newest.model, newest.version)
        assignment = self._plan(newest.deployment_id, release, device)
        now = self.clock()
        self.store.add_deployment_devices([DeploymentDevice(
            deployment_id=newest.deployment_id, device_id=device_id, variant=assignment.variant,
            sha256=assignment.sha256, state="assigned", outcome="", reason="", updated_at=now, previous=None,
        )])
        self._assign(device_id, assignment)
        self._refresh_status(newest.deployment_id, now)
        logger.info("device joined deployment=%s device_id=%s target=%s", newest.deployment_id, device_id, newest.target)
        return newest

    def _plan(self, deployment_id: str, release: ModelVersion, device: Device) -> DirectorAssignment:
        chosen = self._chooser(release)(device)
        self._why[(deployment_id, device.device_id)] = chosen.why
        logger.info("variant chosen deployment=%s device_id=%s variant=%s why=%s", deployment_id,
                    device.device_id, chosen.variant.variant, chosen.why)
        return _planned(deployment_id, release, chosen.variant.variant)

    def _chooser(self, release: ModelVersion) -> Callable[[Device | DeviceProfile], choice.Choice]:
        """The variant choice for one release, reading the fleet's telemetry and the pins
        once and deciding once per device profile (hardware class, back ends, group), so
        planning a deployment costs one read however large the fleet."""
        aggregates = [a for a in self.store.aggregates() if (a.model, a.version) == (release.model, release.version)]
        # Who served it, by hardware class: the profiles only, and only when it was served.
        devices = {p.device_id: p for p in self.store.device_profiles()} if aggregates else {}
        pins = self.store.pins(release.model)
        measured: dict[str, dict[str, float]] = {}
        decided: dict[tuple[str, tuple[str, ...], str], choice.Choice] = {}

        def choose(device: Device | DeviceProfile) -> choice.Choice:
            key = (device.hardware_class, tuple(device.backends), device.group)
            if key not in decided:
                klass = device.hardware_class
                if klass not in measured:
                    measured[klass] = choice.class_latency(aggregates, devices, model=release.model,
                                                           version=release.version, hardware_class=klass)
                decided[key] = choice.choose(device, release, measured[klass], pins=pins)
            return decided[key]

        return choose

    def _assign(self, device_id: str, a: DirectorAssignment | None) -> None:
        self._assign_many({device_id: a})

    def _assign_many(self, assignments: Mapping[str, DirectorAssignment | None]) -> None:
        """Signs the devices' director entries in one publish, tells each, records them."""
        versions = self.signer.assign_many(assignments)
        # Told as soon as what they will fetch is signed and saved: recording the assignment
        # documents (0.1-0.8 s for 10,000) is the server's bookkeeping, which a device's
        # check never reads. A stop before it is recorded leaves the row unsigned, so it
        # is signed and told again after the next start: the same entry, a second notice.
        within_ms = check_window_ms(len(assignments))
        self.hub.publish_many([(device_id, AssignmentNotice(director_version=versions[device_id],
                                                            deployment_id=a.deployment_id if a else "",
                                                            check_within_ms=within_ms))
                               for device_id, a in assignments.items()])
        documents: dict[int, dict[str, Any]] = {}    # shared assignments: one document each
        kept = []
        for device_id, a in assignments.items():
            if a is None:
                self.store.set_assignment(device_id, None)
                continue
            base = documents.get(id(a))
            if base is None:
                base = documents[id(a)] = assignment_document(a)
            why = self._why.pop((a.deployment_id, device_id), "")
            kept.append(Assignment(device_id, a.deployment_id, {**base, "why": why} if why else base))
        self.store.set_assignments(kept)


    # -- reports ------------------------------------------------------------------------
    def apply_status(self, device_id: str, update: StatusUpdate) -> None:
        update.check()
        now = self.clock()
        failed = update.event == "failure" or update.outcome in {"failed", "rolled_back"}
        self.store.record_report(device_id, at=now, state=update.state, active_model=update.active_model,
                                 deployment_id=update.deployment_id,
                                 error=update.reason[:MAX_REASON_CHARS] if failed else "")
        row = self.store.deployment_device(update.deployment_id, device_id) if update.deployment_id else None
        if row is None or row.outcome:
            return  # a report for no deployment of ours, or after the row closed: device state only
        outcome = update.outcome if update.final else ""
        reason = update.reason[:MAX_REASON_CHARS]
        self.store.update_deployment_device(update.deployment_id, device_id, state=update.state, outcome=outcome,
                                            reason=reason, at=now)
        if outcome:
            logger.info("deployment device final deployment=%s device_id=%s outcome=%s reason=%s",
                        update.deployment_id, device_id, outcome, reason)
        self._refresh_status(update.deployment_id, now)

    def _refresh_status(self, deployment_id: str, now: float) -> None:
        deployment = self.store.deployment(deployment_id)
        if deployment is None or deployment.status in {"cancelled", "reverted"}:
            return
        status = status_from(self.store.deployment_counts(deployment_id))
        if status != deployment.status:
            self.store.set_deployment_status(deployment_id, status, now)

    # -- cancel -------------------------------------------------------------------------
    def cancel(self, deployment_id: str) -> Deployment:
        deployment = self.get(deployment_id)
        now = self.clock()
        if deployment.status != "active":
            raise InvalidRequest(f"deployment {deployment_id} is {deployment.status}; only an active deployment can be cancelled")
        for row in self.store.deployment_devices(deployment_id):
            if row.outcome:
                continue
            with self.signer.locked():
                self.store.update_deployment_device(deployment_id, row.device_id, state=row.state,
                                                    outcome="cancelled", reason="cancelled by the operator", at=now)
                current = self.store.assignment(row.device_id)
                if current is None or current.deployment_id == deployment_id:   # unsigned rows changed nothing
                    self._assign(row.device_id, assignment_from(row.previous) if row.previous else None)
        self.store.set_deployment_status(deployment_id, "cancelled", now)
        logger.info("deployment cancelled deployment=%s", deployment_id)
        return self.get(deployment_id)

    # -- revert -------------------------------------------------------------------------
    def revert(self, deployment_id: str, device_ids: Sequence[str] | None = None, *,
               reason: str = "reverted by the operator") -> list[str]:
        """Gives each device of the deployment (or those named) that is still assigned it the
        assignment it had before (the same signed bytes: the previous artifact's sha256), or
        none; its row closes as "reverted". Returns the devices reverted."""
        now = self.clock()
        wanted = None if device_ids is None else set(device_ids)
        reverted = []
        for row in self.store.deployment_devices(deployment_id):
            if (wanted is not None and row.device_id not in wanted) or row.outcome in {"superseded", "reverted"}:
                continue
            with self.signer.locked():
                current = self.store.assignment(row.device_id)
                if current is not None and current.deployment_id != deployment_id:
                    continue    # a newer deployment owns this device now
                self.store.update_deployment_device(deployment_id, row.device_id, state=row.state,
                                                    outcome="reverted", reason=reason[:MAX_REASON_CHARS], at=now)
                if current is not None:
                    self._assign(row.device_id, assignment_from(row.previous) if row.previous else None)
            reverted.append(row.device_id)
        self._refresh_status(deployment_id, now)
        logger.info("deployment reverted deployment=%s devices=%d reason=%s", deployment_id, len(reverted), reason)
        return reverted

    def reopen(self, deployment_id: str, device_ids: Sequence[str]) -> None:
        """Assigns the deployment again to devices whose rows closed (reverted, failed): each
        row is open again, and the assigner signs it as it signs a new one."""
        now = self.clock()
        for device_id in device_ids:
            self.store.update_deployment_device(deployment_id, device_id, state="assigned", outcome="", reason="",
                                                at=now)
        self._refresh_status(deployment_id, now)
        self.on_created()

    def undo(self, deployment_id: str) -> Deployment:
        """`deploy undo`: every device of the deployment back to what it ran before."""
        deployment = self.get(deployment_id)
        if deployment.status in {"cancelled", "reverted"}:
            raise IllegalTransition(f"deployment {deployment_id} is {deployment.status}; there is nothing to undo")
        self.revert(deployment_id)
        self.store.set_deployment_status(deployment_id, "reverted", self.clock())
        return self.get(deployment_id)

    # -- reading ------------------------------------------------------------------------
    def get(self, deployment_id: str) -> Deployment:
        found = self.store.deployment(deployment_id) if len(deployment_id) <= 128 else None
        if found is None:
            raise DeploymentNotFound(f"deployment {deployment_id[:80]!r} does not exist: list them with GET /v1/deployments")
        return found

    def current_notice(self, device_id: str) -> AssignmentNotice:
        current = self.store.assignment(device_id)
        return AssignmentNotice(director_version=self.signer.director_version(device_id),
                                deployment_id=current.deployment_id if current else "")

    def current_notices(self, device_ids: Sequence[str]) -> list[tuple[str, AssignmentNotice]]:
        """`current_notice` for many devices told at once (their assignments in one read),
        each asked to spread its check over the window that many devices warrant."""
        current = self.store.assignments_of(device_ids)
        within_ms = check_window_ms(len(device_ids))
        return [(d, AssignmentNotice(director_version=self.signer.director_version(d),
                                     deployment_id=current[d].deployment_id if d in current else "",
                                     check_within_ms=within_ms)) for d in device_ids]


def _planned(deployment_id: str, release: ModelVersion, variant_name: str) -> DirectorAssignment:
    variant = release.variant(variant_name) or release.variants[0]
    g = variant.golden or release.golden   # a compressed variant carries its own golden outputs
    return DirectorAssignment(
        deployment_id=deployment_id, model=release.model, version=release.version, variant=variant.variant,
        format=variant.format, sha256=variant.sha256, length=variant.length,
        golden=GoldenRef(path=artifact_path(g.sha256), sha256=g.sha256, length=g.length, atol=g.atol, rtol=g.rtol)
        if g else None,
        inputs=release.inputs,
    )
