"""Rollouts: start one, plan one (a dry run) and the operator's verbs (the document: `documents.rollout`).

Every change is one `Store.save_rollout`, guarded by the revision it read, with its log
entry in the same transaction: a verb racing the scheduler (or a second server process)
either wins whole or is retried on fresh state. State is saved before acting: devices
are marked `assigned` before their wave is assigned and `reverting` before they are sent
back, so a restart finishes what was started (`recover`, and the scheduler's next look).

A failed gate reverts the cohorts it failed on; an operator's abort or an inconclusive
abort reverts every device the rollout reached; `undo` also reverts a completed rollout.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from fleetcast.server import choice
from fleetcast.server.deployments import Deployments
from fleetcast.server.errors import Conflict, InvalidRequest, RolloutNotFound
from fleetcast.server.rollouts import plan
from fleetcast.server.rollouts.spec import RolloutSpec, spec_from
from fleetcast.server.rollouts.table import (
    STAGE_TRANSITIONS,
    RolloutEvent,
    RolloutState,
    StageEvent,
    StageState,
    next_rollout,
    next_stage,
)
from fleetcast.server.store import Rollout, RolloutDevice, RolloutLogEntry, RolloutStage, Store

logger = logging.getLogger(__name__)

IN_FLIGHT: Final = frozenset({"assigned", "downloading", "verifying", "activating"})
UNASSIGNED: Final = frozenset({"planned", "held"})
SENT_BACK: Final = frozenset({"reverting", "reverted"})
SAVE_ATTEMPTS: Final = 5
VERBS: Final = {"pause": RolloutEvent.PAUSE, "resume": RolloutEvent.RESUME, "promote": RolloutEvent.PROMOTE,
                "abort": RolloutEvent.ABORT, "undo": RolloutEvent.UNDO}


@dataclasses.dataclass(frozen=True)
class Change:
    """What one save writes: the rollout's new state and stage, rows, the log entry."""

    event: str
    from_state: str
    to_state: str
    stage: int
    stages: Sequence[RolloutStage] = ()
    devices: Sequence[RolloutDevice] = ()
    reason: str = ""
    snapshot: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Rollouts:
    def __init__(self, *, store: Store, deployments: Deployments, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.deployments = deployments
        self.clock = clock

    # -- planning and starting ---------------------------------------------------------------
    def _planned(self, rollout_id: str, *, model: str, version: str | None, target: str,
                 spec: RolloutSpec) -> tuple[Any, list[list[plan.Planned]], dict[str, str]]:
        target_plan = self.deployments.plan(model=model, version=version, target=target)
        variants = {i: c.variant.variant for i, c in target_plan.choices.items()}
        members = [plan.Planned(d.device_id, plan.cohort_of(hardware_class=d.hardware_class, backends=d.backends,
                                                            variant=variants[d.device_id]))
                   for d in target_plan.devices]
        return target_plan, plan.plan_stages(rollout_id, members, spec.stage_sizes()), variants

    def plan(self, *, model: str, version: str | None, target: str, spec: RolloutSpec) -> dict[str, Any]:
        """The dry run: which devices each stage would reach, per cohort. Records nothing."""
        target_plan, stages, _ = self._planned("dry-run", model=model, version=version, target=target, spec=spec)
        return {"model": target_plan.release.model, "version": target_plan.release.version, "target": target,
                "spec": spec.document(), "devices": sum(len(s) for s in stages),
                "stages": [{"index": i, "size": size.text(), "adds": len(s), "cohorts": counts,
                            "device_ids": [d.device_id for d in s][:1000]}
                           for i, (size, s, counts) in enumerate(zip(spec.stage_sizes(), stages,
                                                                     plan.summary(stages)))]}

    def start(self, *, model: str, version: str | None, target: str, spec: RolloutSpec) -> Rollout:
        # One rollout of a model at a time, on every replica: the check and the record
        # happen under the store's lock for the model's rollouts.
        with self.store.exclusive(f"rollouts:{model}"):
            return self._start(model=model, version=version, target=target, spec=spec)

    def _start(self, *, model: str, version: str | None, target: str, spec: RolloutSpec) -> Rollout:
        busy = [r for r in self.store.rollouts(states=[RolloutState.RUNNING, RolloutState.PAUSED]) if r.model == model]
        if busy:
            raise Conflict(f"rollout {busy[0].rollout_id} of {model} is {busy[0].state}: let it finish, "
                           "or abort it, before starting another")
        rollout_id = f"ro-{secrets.token_hex(8)}"
        target_plan, stages, variants = self._planned(rollout_id, model=model, version=version, target=target,
                                                      spec=spec)
        release = target_plan.release
        deployment = self.deployments.new_deployment(release, target=f"rollout:{rollout_id}")
        self.deployments.assign_wave(deployment, release, {})     # recorded now, its devices join per stage
        now = self.clock()
        rollout = Rollout(rollout_id=rollout_id, model=release.model, version=release.version, target=target,
                          deployment_id=deployment.deployment_id, state=RolloutState.RUNNING, stage=0,
                          spec=spec.document(), created_at=now, updated_at=now)
        rows = [RolloutStage(rollout_id=rollout_id, index=i, size=size.text(), state=StageState.PENDING)
                for i, size in enumerate(spec.stage_sizes())]
        devices = [RolloutDevice(rollout_id=rollout_id, device_id=d.device_id, stage=i, cohort=d.cohort,
                                 variant=variants[d.device_id], state="planned", updated_at=now)
                   for i, stage in enumerate(stages) for d in stage]
        self.store.add_rollout(rollout, rows, devices, RolloutLogEntry(
            rollout_id=rollout_id, at=now, actor="operator", event="start", from_state="", to_state=rollout.state,
            reason=f"{release.model}@{release.version} to {target} in stages {spec.stages}",
            snapshot={"cohorts": plan.summary(stages)}))
        logger.info("rollout started rollout=%s model=%s version=%s devices=%d stages=%s", rollout_id,
                    release.model, release.version, len(devices), spec.stages)
        return rollout

    # -- saving -----------------------------------------------------------------------------
    def save(self, rollout: Rollout, change: Change, *, actor: str) -> Rollout | None:
        """Writes one change; None when another save won (the caller reads again)."""
        now = self.clock()
        new = dataclasses.replace(rollout, state=change.to_state, stage=change.stage, updated_at=now,
                                  revision=rollout.revision + 1)
        entries = [RolloutLogEntry(rollout_id=rollout.rollout_id, at=now, actor=actor, event=change.event,
                                   from_state=change.from_state, to_state=change.to_state, reason=change.reason,
                                   snapshot=change.snapshot)] if change.event else []
        if not self.store.save_rollout(new, stages=change.stages, devices=change.devices, entries=entries):
            return None
        if change.event:
            logger.info("rollout=%s %s --%s--> %s reason=%s", rollout.rollout_id, change.from_state, change.event,
                        change.to_state, change.reason)
        return new

    def marked(self, devices: Iterable[RolloutDevice], state: str, reason: str, **extra: Any) -> list[RolloutDevice]:
        now = self.clock()
        return [dataclasses.replace(d, state=state, reason=reason, updated_at=now, **extra) for d in devices]

    def send_back(self, rollout: Rollout, devices: Sequence[RolloutDevice], *, reason: str) -> None:
        """Reverts devices already marked `reverting` and marks them `reverted` (idempotent)."""
        if not devices:
            return
        self.deployments.revert(rollout.deployment_id, [d.device_id for d in devices], reason=reason)
        for _ in range(SAVE_ATTEMPTS):
            current = self.get(rollout.rollout_id)
            change = Change(event="", from_state=current.state, to_state=current.state, stage=current.stage,
                            devices=self.marked(devices, "reverted", reason))
            if self.save(current, change, actor="scheduler") is not None:
                return

    def recover(self) -> int:
        """After a restart: finishes every revert that was saved but perhaps not sent."""
        count = 0
        for r in self.store.rollouts(limit=1000):
            pending = [d for d in self.store.rollout_devices(r.rollout_id) if d.state == "reverting"]
            self.send_back(r, pending, reason=pending[0].reason if pending else "")
            count += len(pending)
        return count

    # -- the operator's verbs ------------------------------------------------------------------
    def command(self, rollout_id: str, verb: str, *, full: bool = False, reason: str = "") -> Rollout:
        """pause | resume | promote [full] | abort | undo. An illegal one raises IllegalTransition (409)."""
        if verb not in VERBS:
            raise InvalidRequest(f"rollout verb {verb[:20]!r} is not known: use {', '.join(VERBS)}")
        for _ in range(SAVE_ATTEMPTS):
            r = self.get(rollout_id)
            event = VERBS[verb]
            to = next_rollout(RolloutState(r.state), event)
            stages = self.store.rollout_stages(rollout_id)
            devices = self.store.rollout_devices(rollout_id)
            change, back = self._verb(r, event, to, stages, devices, full=full,
                                      reason=reason or f"{verb} by the operator")
            saved = self.save(r, change, actor="operator")
            if saved is not None:
                self.send_back(saved, back, reason=change.reason)
                return self.get(rollout_id)
        raise Conflict(f"rollout {rollout_id} kept changing while {verb} was applied: try again")

    def _verb(self, r: Rollout, event: RolloutEvent, to: RolloutState, stages: list[RolloutStage],
              devices: list[RolloutDevice], *, full: bool, reason: str) -> tuple[Change, list[RolloutDevice]]:
        now = self.clock()
        stage = stages[r.stage]
        base = {"event": event.value, "from_state": r.state, "to_state": to.value, "stage": r.stage,
                "reason": reason}
        if event is RolloutEvent.PAUSE:
            return Change(**base), []
        if event is RolloutEvent.RESUME:
            return self._resume(r, stage, devices, base, now), []
        if event is RolloutEvent.PROMOTE:
            return self._promote(r, stages, devices, base, now, full=full), []
        # abort and undo: the current stage ends failed, devices go back
        changed = []
        if (StageState(stage.state), StageEvent.ABORT) in STAGE_TRANSITIONS:
            changed.append(dataclasses.replace(stage, state=next_stage(StageState(stage.state), StageEvent.ABORT),
                                               ended_at=now))
        reached = [d for d in devices if d.state not in UNASSIGNED | SENT_BACK]
        back = self.marked(reached, "reverting", reason)
        return Change(**base, stages=changed, devices=back), back

    def _resume(self, r: Rollout, stage: RolloutStage, devices: list[RolloutDevice], base: dict[str, Any],
                now: float) -> Change:
        state = StageState(stage.state)
        if state is StageState.INCONCLUSIVE:     # soak again, from now
            return Change(**base, stages=[dataclasses.replace(stage, state=next_stage(state, StageEvent.RETRY),
                                                              soak_started_at=now, results=())])
        if state is StageState.FAILED:           # a held failure: the reverted devices are tried again
            again = [d for d in devices if d.stage == r.stage and d.state in SENT_BACK]
            return Change(**base, stages=[dataclasses.replace(stage, state=next_stage(state, StageEvent.RETRY),
                                                              soak_started_at=None, ended_at=None, results=())],
                          devices=self.marked(again, "planned", "", assigned_at=None))
        return Change(**base)

    def _promote(self, r: Rollout, stages: list[RolloutStage], devices: list[RolloutDevice], base: dict[str, Any],
                 now: float, *, full: bool) -> Change:
        stage = stages[r.stage]
        changed = []
        if stage.state != StageState.PASSED:
            changed.append(dataclasses.replace(stage, state=next_stage(StageState(stage.state), StageEvent.PROMOTE),
                                               ended_at=now))
        moved: list[RolloutDevice] = []
        if full and r.stage < len(stages) - 1:
            last = len(stages) - 1
            moved = [dataclasses.replace(d, stage=last, updated_at=now) for d in devices
                     if d.stage > r.stage and d.state == "planned"]
            changed += [dataclasses.replace(s, state=StageState.PASSED, ended_at=now) for s in stages[r.stage + 1:last]
                        if s.state == StageState.PENDING]
        return Change(**{**base, "reason": base["reason"] + (" (full)" if full else "")}, stages=changed,
                      devices=moved)

    # -- reading ----------------------------------------------------------------------------
    def get(self, rollout_id: str) -> Rollout:
        found = self.store.rollout(rollout_id) if len(rollout_id) <= 64 else None
        if found is None:
            raise RolloutNotFound(f"rollout {rollout_id[:80]!r} does not exist: list them with GET /v1/rollouts")
        return found

    def spec(self, body: Mapping[str, Any]) -> RolloutSpec:
        return spec_from(body)


def choices_for(release: Any, devices: Sequence[RolloutDevice], *, why: str) -> dict[str, choice.Choice]:
    """The planned variant of each device, as the deployment's wave takes it."""
    out = {}
    for d in devices:
        variant = release.variant(d.variant) or release.variants[0]
        out[d.device_id] = choice.Choice(variant=variant, why=why)
    return out
