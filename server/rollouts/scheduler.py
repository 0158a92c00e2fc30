"""Advances running rollouts: assigns each stage's devices, follows them, soaks, judges.

`step` looks at one rollout once and makes at most one change through the tables (a
stage starting, a wave assigned, devices settling, a gate's verdict, the next stage);
`run` steps every running rollout each `period_s`, each no more often than its own
`evaluation_interval_s`. Everything it decides is read back from the store, so a
restart resumes exactly where the last save left it.

A device's state follows its deployment row and its own reports:

| deployment row                      | device state                      |
|-------------------------------------|-----------------------------------|
| no outcome, state download / verify | downloading / verifying           |
| no outcome, later states            | activating                        |
| installed, reports the new version  | serving                           |
| installed, not yet reporting it     | activating                        |
| rolled_back (its agent's trial)     | rolled_back                       |
| failed, cancelled, superseded       | failed (reason kept)              |
| anything in flight past the timeout | timed_out                         |
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Final

from fleetcast.server.rollouts import evidence, gates
from fleetcast.server.rollouts.service import IN_FLIGHT, SENT_BACK, UNASSIGNED, Change, Rollouts, choices_for
from fleetcast.server.rollouts.spec import RolloutSpec, spec_from
from fleetcast.server.rollouts.table import RolloutEvent, RolloutState, StageEvent, StageState, next_rollout, next_stage
from fleetcast.server.store import DeploymentDevice, Rollout, RolloutDevice, RolloutStage

logger = logging.getLogger(__name__)

ROW_STATES: Final = {"assigned": "assigned", "download": "downloading", "verify": "verifying"}
MAX_STEPS_PER_LOOK: Final = 8


def step(rollouts: Rollouts, rollout_id: str) -> bool:
    """One change to a running rollout, if one is due; True when something was saved."""
    r = rollouts.store.rollout(rollout_id)
    if r is None or r.state != RolloutState.RUNNING:
        return False
    spec = spec_from(r.spec)
    stages = rollouts.store.rollout_stages(rollout_id)
    devices = rollouts.store.rollout_devices(rollout_id)
    stage = stages[r.stage]
    state = StageState(stage.state)
    if state is StageState.PASSED:
        return _advance(rollouts, r, stages)
    if state is StageState.PENDING:
        started = dataclasses.replace(stage, state=next_stage(state, StageEvent.START),
                                      started_at=rollouts.clock())
        return _save(rollouts, r, Change(event=f"stage_{StageEvent.START.value}", from_state=r.state,
                                         to_state=r.state, stage=r.stage, stages=[started],
                                         reason=f"stage {r.stage} ({stage.size}) starts"))
    if state is StageState.RUNNING:
        return _follow(rollouts, r, spec, stage, devices)
    if state is StageState.SOAKING:
        return _judge(rollouts, r, spec, stage, devices)
    return False


def _save(rollouts: Rollouts, r: Rollout, change: Change) -> bool:
    return rollouts.save(r, change, actor="scheduler") is not None


def _advance(rollouts: Rollouts, r: Rollout, stages: Sequence[RolloutStage]) -> bool:
    last = r.stage >= len(stages) - 1
    event = RolloutEvent.LAST_STAGE_PASSED if last else RolloutEvent.STAGE_PASSED
    to = next_rollout(RolloutState(r.state), event)
    return _save(rollouts, r, Change(event=event.value, from_state=r.state, to_state=to.value,
                                     stage=r.stage if last else r.stage + 1,
                                     reason="every stage passed" if last else f"stage {r.stage} passed"))


def device_state(row: DeploymentDevice | None, active_model: str, *, serving_as: str) -> tuple[str, str]:
    """(state, reason) of an assigned device from its deployment row and its latest report."""
    if row is None:
        return "assigned", ""
    if row.outcome == "installed":
        return ("serving", "") if active_model == serving_as else ("activating", "installed, not reporting it yet")
    if row.outcome == "rolled_back":
        return "rolled_back", row.reason or "its agent rolled the version back in its trial"
    if row.outcome:
        return "failed", f"{row.outcome}: {row.reason}"[:300]
    return ROW_STATES.get(row.state, "activating"), ""


def _follow(rollouts: Rollouts, r: Rollout, spec: RolloutSpec, stage: RolloutStage,
            devices: Sequence[RolloutDevice]) -> bool:
    store, now = rollouts.store, rollouts.clock()
    mine = [d for d in devices if d.stage == r.stage]
    rows = {x.device_id: x for x in store.deployment_devices(r.deployment_id)}
    serving_as = f"{r.model}@{r.version}"
    changed: list[RolloutDevice] = []
    lost: list[RolloutDevice] = []     # marked assigned, but the wave never recorded (a crash between)
    for d in mine:
        if d.state not in IN_FLIGHT:
            continue
        row = rows.get(d.device_id)
        if row is None:
            lost.append(d)
            continue
        device = store.device(d.device_id) if row.outcome == "installed" else None
        state, reason = device_state(row, device.active_model if device else "", serving_as=serving_as)
        if state in IN_FLIGHT and d.assigned_at is not None and now - d.assigned_at > spec.device_timeout_s:
            state, reason = "timed_out", f"not serving {spec.device_timeout_s:g} s after it was assigned"
        if (state, reason) != (d.state, d.reason):
            changed.append(dataclasses.replace(d, state=state, reason=reason, updated_at=now))
    if lost:
        _assign(rollouts, r, lost, recorded=rows.keys())
    wave = _wave(spec, stage, mine, now)
    if changed or wave:
        marked = rollouts.marked(wave, "assigned", "", assigned_at=now)
        saved = rollouts.save(r, Change(event="", from_state=r.state, to_state=r.state, stage=r.stage,
                                        devices=[*changed, *marked]), actor="scheduler")
        if saved is None:
            return False
        _assign(rollouts, saved, marked, recorded=rows.keys())   # saved first: a crash now leaves them `lost`
        return True
    if all(d.state not in IN_FLIGHT and d.state != "planned" for d in mine):
        soaking = dataclasses.replace(stage, state=next_stage(StageState(stage.state), StageEvent.SETTLED),
                                      soak_started_at=now)
        counts: dict[str, int] = {}
        for d in mine:
            counts[d.state] = counts.get(d.state, 0) + 1
        return _save(rollouts, r, Change(event=f"stage_{StageEvent.SETTLED.value}", from_state=r.state,
                                         to_state=r.state, stage=r.stage, stages=[soaking], snapshot=counts,
                                         reason=f"stage {r.stage}: every device settled; soaking {spec.soak_s:g} s"))
    return False


def _wave(spec: RolloutSpec, stage: RolloutStage, mine: Sequence[RolloutDevice], now: float) -> list[RolloutDevice]:
    """The planned devices to assign now, within the in-flight and start-rate limits."""
    waiting = [d for d in mine if d.state == "planned"]
    budget = len(waiting)
    if spec.max_in_flight:
        budget = min(budget, spec.max_in_flight - sum(d.state in IN_FLIGHT for d in mine))
    if spec.start_rate_per_s and stage.started_at is not None:
        allowed = math.floor(spec.start_rate_per_s * (now - stage.started_at)) + 1
        budget = min(budget, allowed - sum(d.assigned_at is not None for d in mine))
    return waiting[:max(0, budget)]


def _assign(rollouts: Rollouts, r: Rollout, wave: Sequence[RolloutDevice], *, recorded: Iterable[str]) -> None:
    """Assigns a wave: new devices join the deployment, ones it had before (sent back, now
    tried again) have their rows opened again."""
    if not wave:
        return
    d = rollouts.deployments
    had = set(recorded)
    again = [x.device_id for x in wave if x.device_id in had]
    if again:
        d.reopen(r.deployment_id, again)
    fresh = [x for x in wave if x.device_id not in had]
    if fresh:
        release = d.registry.version(r.model, r.version)
        d.assign_wave(d.get(r.deployment_id), release,
                      choices_for(release, fresh, why=f"rollout {r.rollout_id} stage {r.stage}"))


def _judge(rollouts: Rollouts, r: Rollout, spec: RolloutSpec, stage: RolloutStage,
           devices: Sequence[RolloutDevice]) -> bool:
    now = rollouts.clock()
    since = stage.soak_started_at if stage.soak_started_at is not None else now
    found = evidence.gather(rollouts.store, r, devices, stage=r.stage, since=since)
    results = gates.evaluate_all(spec.checks(), found, min_inferences=spec.min_inferences,
                                 min_devices=spec.min_devices)
    # A stage left with no device to judge (all of it reached earlier, or held back) has nothing to soak.
    decision = gates.decide(results, soak_over=now - since >= spec.soak_s or not found)
    documents = [x.document() for x in results]
    snapshot = {"checks": documents}
    judged = dataclasses.replace(stage, results=documents)
    if decision == "wait":
        return _save(rollouts, r, Change(event="", from_state=r.state, to_state=r.state, stage=r.stage,
                                         stages=[judged]))
    if decision == "pass":
        passed = dataclasses.replace(judged, state=next_stage(StageState.SOAKING, StageEvent.GATES_PASSED),
                                     ended_at=now)
        return _save(rollouts, r, Change(event=f"stage_{StageEvent.GATES_PASSED.value}", from_state=r.state,
                                         to_state=r.state, stage=r.stage, stages=[passed], snapshot=snapshot,
                                         reason=f"stage {r.stage}: every check passed over {now - since:.0f} s"))
    if decision == "no_data":
        ended = dataclasses.replace(judged, state=next_stage(StageState.SOAKING, StageEvent.NO_DATA), ended_at=now)
        missing = sorted({f"{x.cohort}: {x.check}" for x in results if x.verdict == "no_data"})
        reason = f"stage {r.stage} inconclusive, not enough data for {'; '.join(missing)[:300]}"
        if spec.on_inconclusive == "abort":
            return _fail(rollouts, r, ended, devices, RolloutEvent.ABORT, reason=reason, snapshot=snapshot,
                         cohorts=None)
        return _save(rollouts, r, Change(event=RolloutEvent.INCONCLUSIVE.value, from_state=r.state,
                                         to_state=next_rollout(RolloutState(r.state), RolloutEvent.INCONCLUSIVE),
                                         stage=r.stage, stages=[ended], snapshot=snapshot, reason=reason))
    failed = gates.failed_cohorts(results)
    breaches = "; ".join(f"{x.cohort}: {x.check} is {_shown(x.value)}" for x in results if x.verdict == "fail")
    reason = f"stage {r.stage} failed: {breaches}"[:600]
    cohorts_left = {d.cohort for d in devices if d.state not in SENT_BACK | {"held"}} - set(failed)
    if spec.hold_back and cohorts_left:
        return _hold_back(rollouts, r, judged, devices, failed, reason=reason, snapshot=snapshot)
    ended = dataclasses.replace(judged, state=next_stage(StageState.SOAKING, StageEvent.GATES_FAILED), ended_at=now)
    event = RolloutEvent.GATE_HELD if spec.on_fail == "pause" else RolloutEvent.GATE_FAILED
    return _fail(rollouts, r, ended, devices, event, reason=reason, snapshot=snapshot, cohorts=failed)


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _fail(rollouts: Rollouts, r: Rollout, ended: RolloutStage, devices: Sequence[RolloutDevice],
          event: RolloutEvent, *, reason: str, snapshot: dict[str, object], cohorts: Sequence[str] | None) -> bool:
    """Ends the stage, moves the rollout by `event` and reverts the devices of `cohorts`
    (None: every device the rollout reached), saved as `reverting` before they are sent."""
    reached = [d for d in devices if d.state not in UNASSIGNED | SENT_BACK
               and (cohorts is None or d.cohort in cohorts)]
    back = rollouts.marked(reached, "reverting", reason)
    saved = rollouts.save(r, Change(event=event.value, from_state=r.state,
                                    to_state=next_rollout(RolloutState(r.state), event).value, stage=r.stage,
                                    stages=[ended], devices=back, snapshot=snapshot, reason=reason),
                          actor="scheduler")
    if saved is None:
        return False
    rollouts.send_back(saved, back, reason=reason)
    return True


def _hold_back(rollouts: Rollouts, r: Rollout, judged: RolloutStage, devices: Sequence[RolloutDevice],
               failed: Sequence[str], *, reason: str, snapshot: dict[str, object]) -> bool:
    """The failed cohorts go back and wait out the rollout; the stage soaks on for the rest."""
    hit = [d for d in devices if d.cohort in failed]
    back = rollouts.marked([d for d in hit if d.state not in UNASSIGNED | SENT_BACK], "reverting", reason)
    held = rollouts.marked([d for d in hit if d.state == "planned"], "held", f"cohort held back: {reason}"[:300])
    saved = rollouts.save(r, Change(event="cohort_held", from_state=r.state, to_state=r.state, stage=r.stage,
                                    stages=[judged], devices=[*back, *held], snapshot=snapshot, reason=reason),
                          actor="scheduler")
    if saved is None:
        return False
    rollouts.send_back(saved, back, reason=reason)
    return True


def tick(rollouts: Rollouts, *, due: dict[str, float] | None = None) -> int:
    """Steps every running rollout that is due (until it has nothing to do, a few times at
    most); returns how many changes were saved."""
    saved = 0
    now = rollouts.clock()
    for r in rollouts.store.rollouts(states=[RolloutState.RUNNING], limit=1000):
        if due is not None:
            if due.get(r.rollout_id, 0.0) > now:
                continue
            due[r.rollout_id] = now + float(r.spec.get("evaluation_interval_s", 1.0))
        for _ in range(MAX_STEPS_PER_LOOK):
            try:
                if not step(rollouts, r.rollout_id):
                    break
            except Exception:
                logger.exception("rollout step failed rollout=%s; trying again at the next look", r.rollout_id)
                break
            saved += 1
    return saved


async def run(rollouts: Rollouts, *, period_s: float = 0.5) -> None:
    """Finishes interrupted reverts, then steps running rollouts every `period_s`."""
    recovered = await asyncio.to_thread(rollouts.recover)
    if recovered:
        logger.warning("rollout reverts interrupted by the last stop finished devices=%d", recovered)
    due: dict[str, float] = {}
    while True:
        try:
            await asyncio.to_thread(tick, rollouts, due=due)
        except Exception:
            logger.exception("rollout scheduler look failed; retrying in %.1f s", period_s)
        await asyncio.sleep(period_s)
