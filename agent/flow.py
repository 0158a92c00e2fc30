"""The update flow: one table of transitions, state saved before each step.

States are persisted in `state.json`; their values never change (retired ones stay
here, commented). Handlers do the work of one state and return an `Event`; only
`TRANSITIONS` chooses the next state. The `Runner` writes the record
`(state, deployment, manifest digest, enter count, outcome, ...)` atomically
*before* calling a state's handler, so after a crash or `kill -9` it re-enters
the state it was in. Every handler is therefore written to be re-run:

| state    | work                                             | resumed after a crash                         |
|----------|--------------------------------------------------|-----------------------------------------------|
| download | fetch model (and golden) into `downloads/`       | continues the `.part` file from its length,   |
|          |                                                  | re-hashing the bytes already there            |
| verify   | re-hash the downloaded files against the signed  | re-hashes again; a file changed at rest goes  |
|          | sha256/length; a back end can load the format    | back to download (the only backwards row)     |
| install  | wipe the target (inactive) slot, copy the files, | wipes and copies again; the manifest is       |
|          | write the manifest last                          | written last, so a half slot never loads      |
| activate | load the target slot (sha256 re-checked), smoke  | loads and smoke-tests the target slot again;  |
|          | test, flip `active`, swap the serving model      | the flip is idempotent                        |
| trial    | serve for trial_s, watch the error ratio         | runs the whole trial again on the slot the    |
|          |                                                  | pointer names (the target)                    |
| commit   | record the new model as the one to keep          | idempotent                                    |
| rollback | flip `active` back to the previous slot, swap    | flips and swaps again: ends on the old model  |
| report   | drop downloads, remember the deployment ended    | idempotent; the final status goes out through |
|          |                                                  | the outbox when the flow enters idle          |

The target slot is chosen once, when the deployment starts (the slot the pointer
does not name), and saved in the record, so a restart between the pointer flip and
the next save never installs over the model being served. At any instant the
pointer names either the previous slot or a target slot whose model passed its
smoke test, so a restarted agent serves exactly the old model or the new one.

A state entered more than `max_state_entries` times (retries and restarts alike)
posts `Event.LOOP` instead of running its handler, as Mender's StateLoopDetected
does; a deployment that takes more than `max_steps` steps before activation does too.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fleetcast.agent.datadir import read_bounded, write_atomic
from fleetcast.agent.errors import AgentError, TransientError

logger = logging.getLogger(__name__)


class State(enum.StrEnum):  # values are persisted: never rename, never reuse
    IDLE = "idle"
    DOWNLOAD = "download"
    VERIFY = "verify"
    INSTALL = "install"
    ACTIVATE = "activate"
    TRIAL = "trial"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    REPORT = "report"


class Event(enum.StrEnum):  # values are reported to the server: never rename
    START = "start"
    SUCCESS = "success"
    FAILURE = "failure"
    RETRY = "retry"          # transient trouble: try this state again after a backoff
    LOOP = "loop"            # entered too often: give up on the deployment


class Outcome(enum.StrEnum):  # values are reported to the server: never rename
    NONE = ""
    INSTALLED = "installed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


S, E = State, Event

TRANSITIONS: Final[Mapping[tuple[State, Event], State]] = {
    (S.IDLE, E.START): S.DOWNLOAD,
    (S.DOWNLOAD, E.SUCCESS): S.VERIFY,
    (S.DOWNLOAD, E.RETRY): S.DOWNLOAD,      # connection dropped: resume the .part later
    (S.DOWNLOAD, E.FAILURE): S.REPORT,      # nothing touched yet: no rollback needed
    (S.DOWNLOAD, E.LOOP): S.REPORT,
    (S.VERIFY, E.SUCCESS): S.INSTALL,
    (S.VERIFY, E.RETRY): S.DOWNLOAD,        # the file changed at rest: fetch it again
    (S.VERIFY, E.FAILURE): S.REPORT,        # nothing touched yet: no rollback needed
    (S.VERIFY, E.LOOP): S.REPORT,
    (S.INSTALL, E.SUCCESS): S.ACTIVATE,
    (S.INSTALL, E.RETRY): S.INSTALL,        # e.g. disk briefly full
    (S.INSTALL, E.FAILURE): S.REPORT,       # only the inactive slot was touched
    (S.INSTALL, E.LOOP): S.REPORT,
    (S.ACTIVATE, E.SUCCESS): S.TRIAL,
    (S.ACTIVATE, E.FAILURE): S.ROLLBACK,    # the pointer may already name the new slot
    (S.ACTIVATE, E.LOOP): S.ROLLBACK,
    (S.TRIAL, E.SUCCESS): S.COMMIT,
    (S.TRIAL, E.FAILURE): S.ROLLBACK,
    (S.TRIAL, E.LOOP): S.ROLLBACK,
    (S.COMMIT, E.SUCCESS): S.REPORT,
    (S.COMMIT, E.FAILURE): S.ROLLBACK,
    (S.COMMIT, E.LOOP): S.ROLLBACK,
    (S.ROLLBACK, E.SUCCESS): S.REPORT,
    (S.ROLLBACK, E.RETRY): S.ROLLBACK,
    (S.ROLLBACK, E.FAILURE): S.REPORT,      # nothing more we can do: report it
    (S.ROLLBACK, E.LOOP): S.REPORT,
    (S.REPORT, E.SUCCESS): S.IDLE,
    (S.REPORT, E.FAILURE): S.IDLE,          # the final status is queued on entering idle anyway
    (S.REPORT, E.LOOP): S.IDLE,
}

# States past which the step limit no longer applies: they lead back to idle.
_WINDING_DOWN: Final = frozenset({S.ROLLBACK, S.REPORT})
_MAX_ENDED: Final = 64
_MAX_STATE_BYTES: Final = 256 * 1024


def next_state(state: State, event: Event) -> State:
    """The table's answer; an event a state has no row for counts as a failure."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        logger.error("state=%s has no row for event=%s: treating it as failure", state, event)
        return TRANSITIONS[(state, Event.FAILURE)]


def outcome_of(state: State, event: Event, target: State, previous: Outcome) -> Outcome:
    """The deployment's outcome as it stands after the transition state --event--> target."""
    if target is S.REPORT and state is S.COMMIT:
        return Outcome.INSTALLED
    if target is S.REPORT and state is S.ROLLBACK:
        return Outcome.ROLLED_BACK if event is E.SUCCESS else Outcome.FAILED
    if target is S.REPORT:
        return Outcome.FAILED
    return previous


@dataclass(frozen=True)
class Record:
    """What `state.json` holds: enough to resume the deployment after a restart."""

    state: State = S.IDLE
    deployment_id: str = ""
    manifest_digest: str = ""            # sha256 of the assignment JSON below
    enter_count: int = 0
    steps: int = 0
    outcome: Outcome = Outcome.NONE
    reason: str = ""
    event: Event | None = None           # the event that led into `state`
    assignment: Mapping[str, Any] | None = None
    from_slot: str | None = None         # the slot serving when the deployment started
    to_slot: str | None = None           # the slot the new model goes into
    # Recent deployments that ended here without being installed: never retried.
    not_installed: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> bytes:
        doc = dataclasses.asdict(self)
        doc["not_installed"] = list(self.not_installed)
        doc["assignment"] = dict(self.assignment) if self.assignment is not None else None
        return json.dumps({"fleetcast_state": 1, **doc}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Record":
        """Parses `to_json()` output; raises ValueError (only) for anything else."""
        try:
            return cls._from_json(data)
        except ValueError:
            raise
        except (KeyError, TypeError, OverflowError, RecursionError) as e:
            raise ValueError(f"state.json is malformed: {type(e).__name__}: {str(e)[:120]}") from e

    @classmethod
    def _from_json(cls, data: bytes) -> "Record":
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("fleetcast_state") != 1:
            raise ValueError("state.json is not a Fleetcast state record")
        slots = {None, "a", "b"}
        if doc.get("from_slot") not in slots or doc.get("to_slot") not in slots:
            raise ValueError("state.json names an unknown slot")
        assignment = doc.get("assignment")
        ended = doc.get("not_installed") or []
        if assignment is not None and not isinstance(assignment, dict):
            raise ValueError("state.json has a bad assignment")
        if not isinstance(ended, list) or not all(isinstance(x, str) for x in ended):
            raise ValueError("state.json has a bad not_installed list")
        event = doc.get("event")
        return cls(
            state=State(doc["state"]),
            deployment_id=str(doc.get("deployment_id", ""))[:128],
            manifest_digest=str(doc.get("manifest_digest", ""))[:64],
            enter_count=int(doc.get("enter_count", 0)),
            steps=int(doc.get("steps", 0)),
            outcome=Outcome(doc.get("outcome", "")),
            reason=str(doc.get("reason", ""))[:1000],
            event=Event(event) if event else None,
            assignment=assignment,
            from_slot=doc.get("from_slot"),
            to_slot=doc.get("to_slot"),
            not_installed=tuple(str(x)[:128] for x in ended[-_MAX_ENDED:]),
        )


class StateStore:
    """`state.json`, written whole before every step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.load_error = ""     # why the last load() started idle from an unreadable file

    def load(self) -> Record:
        self.load_error = ""
        try:
            return Record.from_json(read_bounded(self.path, _MAX_STATE_BYTES))
        except FileNotFoundError:
            return Record()
        except (OSError, ValueError) as e:
            # Written atomically, so this is tampering or a disk fault. The active
            # pointer still names a slot whose model is re-checked on load: start idle.
            self.load_error = f"state file {self.path} is unreadable ({e}): started idle"
            logger.error("state_file=%s unreadable, starting idle: %s", self.path, e)
            return Record()

    def save(self, record: Record) -> None:
        write_atomic(self.path, record.to_json())


Handler = Callable[[Record], Event]
TransitionHook = Callable[[Record], None]


@dataclass(frozen=True)
class FlowConfig:
    max_state_entries: int = 50
    max_steps: int = 200
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 30.0


class Runner:
    """Drives one deployment through the table, saving the record before each handler."""

    def __init__(self, *, store: StateStore, handlers: Mapping[State, Handler],
                 config: FlowConfig = FlowConfig(), on_transition: TransitionHook | None = None,
                 stop: threading.Event | None = None) -> None:
        self.store = store
        self.handlers = handlers
        self.config = config
        self.on_transition = on_transition or (lambda record: None)
        self.stop = stop or threading.Event()
        self.record = store.load()

    def has_failed(self, deployment_id: str) -> bool:
        """True when `deployment_id` ended here recently without being installed."""
        return deployment_id in self.record.not_installed

    def start(self, *, deployment_id: str, assignment: Mapping[str, Any], digest: str,
              from_slot: str | None, to_slot: str) -> Record:
        """Starts a deployment from idle and runs it until it is idle again (or stopped)."""
        if self.record.state is not S.IDLE:
            raise RuntimeError(f"a deployment is in progress in state {self.record.state}")
        base = Record(state=S.IDLE, deployment_id=deployment_id, manifest_digest=digest,
                      assignment=dict(assignment), from_slot=from_slot, to_slot=to_slot,
                      not_installed=self.record.not_installed)
        return self._drive(self._transition(base, E.START, ""))

    def resume(self) -> Record:
        """Continues a deployment saved before a restart; a no-op when idle."""
        if self.record.state is S.IDLE:
            return self.record
        logger.info("deployment=%s resuming state=%s enter_count=%d",
                    self.record.deployment_id, self.record.state, self.record.enter_count)
        return self._drive(self.record)

    def _drive(self, record: Record) -> Record:
        while record.state is not S.IDLE:
            if self.stop.is_set():
                return record
            record = dataclasses.replace(record, enter_count=record.enter_count + 1,
                                         steps=record.steps + 1)
            self.store.save(record)
            self.record = record
            event, reason = self._run_handler(record)
            if self.stop.is_set():
                return record   # stopping: the saved state is re-entered on the next start
            if event is E.RETRY and next_state(record.state, event) is record.state:
                self._backoff(record.enter_count)
            record = self._transition(record, event, reason)
        return record

    def _run_handler(self, record: Record) -> tuple[Event, str]:
        limit_steps = record.state not in _WINDING_DOWN and record.steps > self.config.max_steps
        if record.enter_count > self.config.max_state_entries or limit_steps:
            return E.LOOP, f"state {record.state} entered {record.enter_count} times: giving up"
        try:
            return self.handlers[record.state](record), ""
        except TransientError as e:
            logger.warning("deployment=%s state=%s transient error: %s",
                           record.deployment_id, record.state, e)
            return E.RETRY, str(e)
        except AgentError as e:
            logger.error("deployment=%s state=%s failed: %s", record.deployment_id, record.state, e)
            return E.FAILURE, str(e)
        except Exception as e:  # a bug must still end in a report, not a crash loop
            logger.exception("deployment=%s state=%s unexpected error", record.deployment_id, record.state)
            return E.FAILURE, f"{type(e).__name__}: {e}"

    def _transition(self, record: Record, event: Event, reason: str) -> Record:
        target = next_state(record.state, event)
        logger.info("deployment=%s %s --%s--> %s", record.deployment_id, record.state, event, target)
        outcome = outcome_of(record.state, event, target, record.outcome)
        same = target is record.state
        keep_reason = record.reason if event is E.SUCCESS else reason or record.reason
        new = dataclasses.replace(
            record, state=target, event=event, outcome=outcome,
            reason=keep_reason[:1000], enter_count=record.enter_count if same else 0)
        if target is S.IDLE:
            failed = record.not_installed
            if outcome is not Outcome.INSTALLED:
                failed = (*failed, record.deployment_id)[-_MAX_ENDED:]
            new = dataclasses.replace(new, steps=0, not_installed=failed)
            self.store.save(new)
        self.record = new
        self.on_transition(new)
        return new

    def _backoff(self, attempt: int) -> None:
        delay = min(self.config.retry_backoff_max_s, self.config.retry_backoff_s * 2 ** min(attempt - 1, 16))
        self.stop.wait(delay)
