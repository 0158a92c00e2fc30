"""The rollout and stage tables, driven by random command sequences."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetcast.server.errors import IllegalTransition
from fleetcast.server.rollouts.table import (
    FINAL_ROLLOUT_STATES,
    ROLLOUT_TRANSITIONS,
    STAGE_TRANSITIONS,
    RolloutEvent,
    RolloutState,
    StageEvent,
    StageState,
    next_rollout,
    next_stage,
)

R, RE, S, SE = RolloutState, RolloutEvent, StageState, StageEvent


def _walk(events: list[RolloutEvent]) -> list[RolloutState]:
    state, seen = R.RUNNING, [R.RUNNING]
    for event in events:
        try:
            state = next_rollout(state, event)
        except IllegalTransition:
            continue        # refused: the state stays as it was
        seen.append(state)
    return seen


@given(st.lists(st.sampled_from(list(RolloutEvent)), max_size=40))
def test_random_commands_never_complete_without_the_last_stage_passing(events: list[RolloutEvent]) -> None:
    state = R.RUNNING
    for event in events:
        try:
            new = next_rollout(state, event)
        except IllegalTransition:
            continue
        if new is R.COMPLETED:
            assert event is RE.LAST_STAGE_PASSED and state is R.RUNNING
        state = new


@given(st.lists(st.sampled_from(list(RolloutEvent)), max_size=40))
def test_a_failed_gate_leaves_no_path_to_completed_but_undo(events: list[RolloutEvent]) -> None:
    state = next_rollout(R.RUNNING, RE.GATE_FAILED)
    for event in events:
        try:
            state = next_rollout(state, event)
        except IllegalTransition:
            pass
        assert state in {R.ABORTED, R.ROLLED_BACK}


@given(st.lists(st.sampled_from(list(RolloutEvent)), max_size=40))
def test_final_states_refuse_everything_but_undo_and_a_double_command_is_refused_not_applied(
        events: list[RolloutEvent]) -> None:
    seen = _walk(events)
    for state in seen:
        if state in FINAL_ROLLOUT_STATES:
            allowed = {e for (s, e) in ROLLOUT_TRANSITIONS if s == state}
            assert allowed <= {RE.UNDO}
    for verb in (RE.PAUSE, RE.RESUME, RE.UNDO):
        for state in R:
            try:
                once = next_rollout(state, verb)
            except IllegalTransition:
                continue
            if once != state:   # pause twice, resume twice, undo twice: the second is refused
                with pytest.raises(IllegalTransition):
                    next_rollout(once, verb)


@settings(max_examples=200)
@given(st.lists(st.sampled_from(list(StageEvent)), max_size=30))
def test_no_stage_passes_without_gates_passing_or_the_operator_promoting(events: list[StageEvent]) -> None:
    state = S.PENDING
    for event in events:
        try:
            new = next_stage(state, event)
        except IllegalTransition:
            continue
        if new is S.PASSED and state is not S.PASSED:
            assert event in {SE.GATES_PASSED, SE.PROMOTE}
            if event is SE.GATES_PASSED:
                assert state is S.SOAKING       # never straight from running: the soak is whole
        state = new


def test_resuming_a_completed_rollout_is_refused_naming_what_it_can_do() -> None:
    with pytest.raises(IllegalTransition, match="is completed and cannot resume: it can undo"):
        next_rollout(R.COMPLETED, RE.RESUME)
    with pytest.raises(IllegalTransition, match="is final"):
        next_rollout(R.ROLLED_BACK, RE.UNDO)


def test_every_state_and_event_value_is_one_the_tables_use() -> None:
    assert {s for s, _ in ROLLOUT_TRANSITIONS} | set(ROLLOUT_TRANSITIONS.values()) == set(R)
    assert {e for _, e in ROLLOUT_TRANSITIONS} == set(RE)
    assert {s for s, _ in STAGE_TRANSITIONS} | set(STAGE_TRANSITIONS.values()) == set(S)
    assert {e for _, e in STAGE_TRANSITIONS} == set(SE)
