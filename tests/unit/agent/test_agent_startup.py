"""The start-up table: every path ends, and only a verified slot is ever served."""

from __future__ import annotations

from fleetcast.agent.startup import STARTUP, Finding, Step, _ENDS


def paths(step: Step, seen: tuple[tuple[Step, Finding], ...] = ()) -> list[tuple[tuple[Step, Finding], ...]]:
    if step in _ENDS:
        return [seen]
    rows = [(s, f) for (s, f) in STARTUP if s is step]
    assert rows, f"step {step} has no rows but is not an end"
    found = []
    for row in rows:
        assert row not in seen, f"the start-up table loops through {row}"
        found += paths(STARTUP[row], (*seen, row))
    return found


def test_every_start_up_path_ends_without_a_loop() -> None:
    assert paths(Step.POINTER)


def test_start_up_serves_only_after_a_slot_verified() -> None:
    for path in paths(Step.POINTER):
        if STARTUP[path[-1]] is Step.SERVE:
            assert path[-1][1] is Finding.VERIFIED, path


def test_start_up_never_falls_back_while_a_deployment_owns_the_other_slot() -> None:
    assert STARTUP[(Step.OTHER, Finding.BUSY)] is Step.REFUSE
