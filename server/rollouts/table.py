"""The rollout's two transition tables: one for the rollout, one for each of its stages.

Handlers (the scheduler, the operator's verbs) do work and return an event; the tables
alone choose the next state. A pair missing from a table is an illegal command
(`IllegalTransition`, HTTP 409): resuming a completed rollout, promoting an aborted one.
State and event values are persisted: never rename, never reuse.

Rollout:

| from                         | event            | to          |
|------------------------------|------------------|-------------|
| running                      | stage_passed     | running     (the next stage starts) |
| running                      | last_stage_passed| completed   |
| running, paused              | promote          | running     (the current stage passes now) |
| running                      | pause            | paused      |
| running                      | inconclusive     | paused      (on_inconclusive=pause: never a pass) |
| running                      | gate_failed      | aborted     (on_fail=abort; the stage's devices go back) |
| running                      | gate_held        | paused      (on_fail=pause; the failed devices go back) |
| paused                       | resume           | running     |
| running, paused              | abort            | aborted     |
| any but rolled_back          | undo             | rolled_back (every device back to what it ran before) |

Stage:

| from                  | event          | to           |
|-----------------------|----------------|--------------|
| pending               | start          | running      (its devices are assigned) |
| running               | settled        | soaking      (every device serving, failed or timed out) |
| running, soaking      | gates_failed   | failed       |
| soaking               | gates_passed   | passed       |
| soaking               | no_data        | inconclusive |
| inconclusive          | retry          | soaking      (resumed: soak again) |
| failed                | retry          | running      (resumed after a held failure) |
| pending, running, soaking, inconclusive, failed | promote | passed  (the operator's word) |
| pending, running, soaking, inconclusive | abort | failed |
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from fleetcast.server.errors import IllegalTransition


class RolloutState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


class RolloutEvent(enum.StrEnum):
    STAGE_PASSED = "stage_passed"
    LAST_STAGE_PASSED = "last_stage_passed"
    PROMOTE = "promote"
    PAUSE = "pause"
    RESUME = "resume"
    INCONCLUSIVE = "inconclusive"
    GATE_FAILED = "gate_failed"
    GATE_HELD = "gate_held"
    ABORT = "abort"
    UNDO = "undo"


class StageState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SOAKING = "soaking"
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"


class StageEvent(enum.StrEnum):
    START = "start"
    SETTLED = "settled"
    GATES_PASSED = "gates_passed"
    GATES_FAILED = "gates_failed"
    NO_DATA = "no_data"
    RETRY = "retry"
    PROMOTE = "promote"
    ABORT = "abort"


R, RE = RolloutState, RolloutEvent
S, SE = StageState, StageEvent

ROLLOUT_TRANSITIONS: Final[Mapping[tuple[RolloutState, RolloutEvent], RolloutState]] = {
    (R.RUNNING, RE.STAGE_PASSED): R.RUNNING,
    (R.RUNNING, RE.LAST_STAGE_PASSED): R.COMPLETED,
    (R.RUNNING, RE.PROMOTE): R.RUNNING,
    (R.PAUSED, RE.PROMOTE): R.RUNNING,       # promoting a paused rollout lets it go on
    (R.RUNNING, RE.PAUSE): R.PAUSED,
    (R.RUNNING, RE.INCONCLUSIVE): R.PAUSED,  # not enough data never passes a gate
    (R.RUNNING, RE.GATE_FAILED): R.ABORTED,
    (R.RUNNING, RE.GATE_HELD): R.PAUSED,
    (R.PAUSED, RE.RESUME): R.RUNNING,
    (R.RUNNING, RE.ABORT): R.ABORTED,
    (R.PAUSED, RE.ABORT): R.ABORTED,
    (R.RUNNING, RE.UNDO): R.ROLLED_BACK,
    (R.PAUSED, RE.UNDO): R.ROLLED_BACK,
    (R.COMPLETED, RE.UNDO): R.ROLLED_BACK,
    (R.ABORTED, RE.UNDO): R.ROLLED_BACK,     # an abort reverts one stage; undo reverts them all
}

STAGE_TRANSITIONS: Final[Mapping[tuple[StageState, StageEvent], StageState]] = {
    (S.PENDING, SE.START): S.RUNNING,
    (S.RUNNING, SE.SETTLED): S.SOAKING,
    (S.RUNNING, SE.GATES_FAILED): S.FAILED,  # installs failed or timed out before any soak
    (S.SOAKING, SE.GATES_FAILED): S.FAILED,
    (S.SOAKING, SE.GATES_PASSED): S.PASSED,
    (S.SOAKING, SE.NO_DATA): S.INCONCLUSIVE,
    (S.INCONCLUSIVE, SE.RETRY): S.SOAKING,
    (S.FAILED, SE.RETRY): S.RUNNING,
    (S.PENDING, SE.PROMOTE): S.PASSED,
    (S.RUNNING, SE.PROMOTE): S.PASSED,
    (S.SOAKING, SE.PROMOTE): S.PASSED,
    (S.INCONCLUSIVE, SE.PROMOTE): S.PASSED,
    (S.FAILED, SE.PROMOTE): S.PASSED,        # the operator overrules the gate, on the record
    (S.PENDING, SE.ABORT): S.FAILED,
    (S.RUNNING, SE.ABORT): S.FAILED,
    (S.SOAKING, SE.ABORT): S.FAILED,
    (S.INCONCLUSIVE, SE.ABORT): S.FAILED,
}

FINAL_ROLLOUT_STATES: Final = frozenset({R.COMPLETED, R.ABORTED, R.ROLLED_BACK})
HEALTHY_ROLLOUT_STATES: Final = frozenset({R.RUNNING, R.PAUSED, R.COMPLETED})


def next_rollout(state: RolloutState, event: RolloutEvent) -> RolloutState:
    """The rollout's next state; raises IllegalTransition (409) naming what is allowed."""
    try:
        return ROLLOUT_TRANSITIONS[(state, event)]
    except KeyError:
        allowed = sorted(e.value for (s, e) in ROLLOUT_TRANSITIONS if s == state)
        raise IllegalTransition(
            f"the rollout is {state.value} and cannot {event.value.replace('_', ' ')}"
            + (f": it can {', '.join(allowed)}" if allowed else ": it is final")) from None


def next_stage(state: StageState, event: StageEvent) -> StageState:
    try:
        return STAGE_TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"the stage is {state.value} and cannot {event.value.replace('_', ' ')}") from None
