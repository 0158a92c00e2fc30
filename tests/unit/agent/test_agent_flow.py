"""The update flow's table and its runner: persistence, resume, loop detection."""

from __future__ import annotations

import json
import threading
from collections import deque
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetcast.agent.errors import ActivationError, DownloadError
from fleetcast.agent.flow import (
    TRANSITIONS, Event, FlowConfig, Outcome, Record, Runner, State, StateStore,
)

FAST = FlowConfig(max_state_entries=5, max_steps=40, retry_backoff_s=0.0, retry_backoff_max_s=0.0)
WORK_STATES = [s for s in State if s is not State.IDLE]


def start(runner: Runner) -> Record:
    return runner.start(deployment_id="d1", assignment={"sha256": "ab"}, digest="00",
                        from_slot="a", to_slot="b")


def scripted(events: dict[State, list[Event]], seen: list[State]) -> dict:
    def handler_for(state: State):
        def handler(record: Record) -> Event:
            seen.append(state)
            queue = events.get(state)
            return queue.pop(0) if queue else Event.SUCCESS
        return handler
    return {s: handler_for(s) for s in WORK_STATES}


def test_every_state_has_success_failure_and_loop_rows() -> None:
    for state in WORK_STATES:
        for event in (Event.SUCCESS, Event.FAILURE, Event.LOOP):
            assert (state, event) in TRANSITIONS, (state, event)


def test_commit_is_unreachable_without_passing_verify() -> None:
    reachable, frontier = {State.IDLE}, deque([State.IDLE])
    while frontier:
        state = frontier.popleft()
        for (src, _), dst in TRANSITIONS.items():
            if src is state and dst is not State.VERIFY and dst not in reachable:
                reachable.add(dst)
                frontier.append(dst)
    assert State.COMMIT not in reachable


def test_happy_path_visits_every_forward_state_and_ends_installed(tmp_path: Path) -> None:
    seen: list[State] = []
    runner = Runner(store=StateStore(tmp_path / "state.json"), handlers=scripted({}, seen), config=FAST)
    end = start(runner)
    assert seen == [State.DOWNLOAD, State.VERIFY, State.INSTALL, State.ACTIVATE,
                    State.TRIAL, State.COMMIT, State.REPORT]
    assert end.state is State.IDLE and end.outcome is Outcome.INSTALLED
    assert not runner.has_failed("d1")
    assert StateStore(tmp_path / "state.json").load().state is State.IDLE


def test_trial_failure_rolls_back_and_reports_rolled_back(tmp_path: Path) -> None:
    seen: list[State] = []
    handlers = scripted({State.TRIAL: [Event.FAILURE]}, seen)
    end = start(Runner(store=StateStore(tmp_path / "s.json"), handlers=handlers, config=FAST))
    assert seen[-2:] == [State.ROLLBACK, State.REPORT]
    assert end.outcome is Outcome.ROLLED_BACK
    assert Runner(store=StateStore(tmp_path / "s.json"), handlers=handlers).has_failed("d1")


def test_state_is_saved_before_the_handler_runs(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    saved: list[tuple[str, int]] = []

    def handler(record: Record) -> Event:
        doc = json.loads((tmp_path / "state.json").read_bytes())
        saved.append((doc["state"], doc["enter_count"]))
        return Event.SUCCESS

    start(Runner(store=store, handlers={s: handler for s in WORK_STATES}, config=FAST))
    assert saved[0] == ("download", 1) and saved[3] == ("activate", 1)


def test_stop_during_a_handler_keeps_the_state_for_the_next_start(tmp_path: Path) -> None:
    stop = threading.Event()
    seen: list[State] = []

    def stopped_in_install(record: Record) -> Event:
        stop.set()   # SIGTERM while installing: whatever the handler returns is not acted on
        return Event.FAILURE

    handlers = scripted({}, seen) | {State.INSTALL: stopped_in_install}
    first = start(Runner(store=StateStore(tmp_path / "s.json"), handlers=handlers, config=FAST, stop=stop))
    assert first.state is State.INSTALL

    seen2: list[State] = []
    runner = Runner(store=StateStore(tmp_path / "s.json"), handlers=scripted({}, seen2), config=FAST)
    assert runner.record.to_slot == "b" and runner.record.deployment_id == "d1"
    end = runner.resume()
    assert seen2[0] is State.INSTALL and end.outcome is Outcome.INSTALLED


def test_restarts_count_as_entries_and_post_a_loop_event(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.json")
    store.save(Record(state=State.ACTIVATE, deployment_id="d1", enter_count=FAST.max_state_entries,
                      from_slot="a", to_slot="b"))
    seen: list[State] = []
    end = Runner(store=store, handlers=scripted({}, seen), config=FAST).resume()
    assert seen == [State.ROLLBACK, State.REPORT]   # activate never ran again
    assert "entered" in end.reason


def test_transient_errors_retry_the_same_state_then_loop(tmp_path: Path) -> None:
    calls = []

    def flaky(record: Record) -> Event:
        calls.append(record.enter_count)
        raise DownloadError("connection reset")

    handlers = scripted({}, []) | {State.DOWNLOAD: flaky}
    end = start(Runner(store=StateStore(tmp_path / "s.json"), handlers=handlers, config=FAST))
    assert calls == [1, 2, 3, 4, 5]
    assert end.outcome is Outcome.FAILED and end.state is State.IDLE


def test_fatal_error_reason_is_kept_for_the_report(tmp_path: Path) -> None:
    def bad(record: Record) -> Event:
        raise ActivationError("output 'y' differs by 0.5")

    reports: list[Record] = []
    handlers = scripted({}, []) | {State.ACTIVATE: bad}
    end = start(Runner(store=StateStore(tmp_path / "s.json"), handlers=handlers, config=FAST,
                       on_transition=reports.append))
    assert "differs" in end.reason
    assert [r.state for r in reports][-3:] == [State.ROLLBACK, State.REPORT, State.IDLE]


def test_corrupt_state_file_starts_idle(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_bytes(b"{not json")
    assert StateStore(tmp_path / "s.json").load().state is State.IDLE


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(Event)), max_size=300))
def test_random_event_sequences_end_idle_and_commit_only_after_verify(tmp_path_factory, events) -> None:
    tmp = tmp_path_factory.mktemp("flow")
    feed = iter(events)
    path: list[State] = []

    def handler(record: Record) -> Event:
        path.append(record.state)
        if record.state is State.COMMIT:
            since_download = path[len(path) - 1 - path[::-1].index(State.DOWNLOAD):] \
                if State.DOWNLOAD in path else path
            assert State.VERIFY in since_download
        return next(feed, Event.FAILURE)

    runner = Runner(store=StateStore(tmp / "s.json"), handlers={s: handler for s in WORK_STATES}, config=FAST)
    end = start(runner)
    assert end.state is State.IDLE
    assert len(path) <= FAST.max_steps + 2 * FAST.max_state_entries + 2
