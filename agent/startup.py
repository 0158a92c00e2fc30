"""What the agent serves when it starts: one table decides, nothing on disk is believed.

The slot files, their manifests, the `active` pointer and `state.json` are on a disk
that someone may have written to. Before serving, a slot must pass all of:

- its manifest parses (bounded read) and names this device;
- its model (and golden) file has the manifest's length and sha256;
- the image repository's targets metadata the agent last verified lists that
  artifact with the same length, sha256 and custom fields, signed by keys chained
  from the configured trust root (`signed_targets.SignedTargets`);
- a back end loads it.

The start-up flow has its own table, `STARTUP`, separate from the update flow's
`flow.TRANSITIONS` (its steps are not persisted: it runs again on every start).
Handlers do the checks and return a `Finding`; only the table chooses the next step.
Whatever was refused is kept in `Startup.problems`: the agent logs each at ERROR and
reports them to the server once it is connected. Nothing here raises for bad files:
a corrupt data dir must never become a crash loop under `Restart=always`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from fleetcast.agent.errors import AgentError, VerificationError
from fleetcast.agent.signed_targets import SignedTargets
from fleetcast.agent.slots import LETTERS, InstalledModel, Slots, other

logger = logging.getLogger(__name__)

Model = TypeVar("Model")


class Step(enum.StrEnum):
    POINTER = "pointer"   # read the `active` pointer
    ACTIVE = "active"     # check and load the slot the pointer names
    OTHER = "other"       # check and load the other slot
    SERVE = "serve"       # end: serve the loaded model (the pointer is repaired to name it)
    EMPTY = "empty"       # end: nothing installed yet; wait for an assignment
    REFUSE = "refuse"     # end: serve nothing; the problems say why


class Finding(enum.StrEnum):
    NAMED = "named"         # the pointer names a slot
    MISSING = "missing"     # there is no pointer: nothing was ever activated
    CORRUPT = "corrupt"     # the pointer is oversized, unreadable or not a slot letter
    VERIFIED = "verified"   # the slot passed every check and its model loaded
    REJECTED = "rejected"   # the slot failed a check or did not load
    BUSY = "busy"           # a deployment in progress owns the other slot


P, F = Step, Finding

STARTUP: Final[Mapping[tuple[Step, Finding], Step]] = {
    (P.POINTER, F.NAMED): P.ACTIVE,
    (P.POINTER, F.MISSING): P.EMPTY,
    (P.POINTER, F.CORRUPT): P.ACTIVE,    # the most recently installed slot stands in for the pointer
    (P.ACTIVE, F.VERIFIED): P.SERVE,
    (P.ACTIVE, F.REJECTED): P.OTHER,
    (P.OTHER, F.VERIFIED): P.SERVE,      # the fallback: the pointer is flipped to it
    (P.OTHER, F.REJECTED): P.REFUSE,
    (P.OTHER, F.BUSY): P.REFUSE,         # the deployment's resume decides (activate or roll back)
}
_ENDS: Final = frozenset({P.SERVE, P.EMPTY, P.REFUSE})


@dataclass
class Outcome(Generic[Model]):
    """Where start-up ended, and why."""

    step: Step = P.POINTER
    slot: str | None = None              # the slot being checked, then the one served
    model: Model | None = None
    pointer_ok: bool = True              # False: the pointer file must be rewritten
    problems: list[str] = field(default_factory=list)


class Startup(Generic[Model]):
    """Runs the start-up table once. `load` turns a checked slot into a served model."""

    def __init__(self, *, slots: Slots, device_id: str, signed: Callable[[], SignedTargets],
                 load: Callable[[InstalledModel], Model], deploying: bool) -> None:
        self.slots = slots
        self.device_id = device_id
        self._signed = signed
        self._signed_cache: SignedTargets | VerificationError | None = None
        self.load = load
        self.deploying = deploying

    def run(self) -> Outcome[Model]:
        out: Outcome[Model] = Outcome()
        handlers = {P.POINTER: self._pointer, P.ACTIVE: self._check, P.OTHER: self._other}
        while out.step not in _ENDS:
            finding = handlers[out.step](out)
            target = STARTUP[(out.step, finding)]
            logger.info("startup %s --%s--> %s slot=%s", out.step, finding, target, out.slot)
            out.step = target
        if out.step is not P.SERVE:
            out.slot = None
        return out

    # ---- handlers: do the checks, return a finding ------------------------------------

    def _pointer(self, out: Outcome[Model]) -> Finding:
        try:
            out.slot = self.slots.read_pointer()
        except VerificationError as e:
            out.problems.append(str(e))
            out.pointer_ok = False
            out.slot = self._newest_installed()
            return F.CORRUPT
        return F.NAMED if out.slot is not None else F.MISSING

    def _other(self, out: Outcome[Model]) -> Finding:
        if self.deploying:
            return F.BUSY
        out.slot = other(out.slot)
        return self._check(out)

    def _check(self, out: Outcome[Model]) -> Finding:
        slot = out.slot or LETTERS[0]
        out.slot = slot
        try:
            installed = self.slots.load(slot)
            if installed.assignment.device_id != self.device_id:
                raise VerificationError(f"slot {slot} manifest is for device {installed.assignment.device_id!r}")
            self.signed().require(installed.assignment)
            out.model = self.load(installed)
        except AgentError as e:
            out.problems.append(f"slot {slot} not served: {e}")
            return F.REJECTED
        except Exception as e:  # a bug in a back end must not become a crash loop at start
            logger.exception("slot=%s unexpected error while loading it", slot)
            out.problems.append(f"slot {slot} not served: {type(e).__name__}: {e}")
            return F.REJECTED
        return F.VERIFIED

    # ---- helpers ----------------------------------------------------------------------

    def signed(self) -> SignedTargets:
        if self._signed_cache is None:
            try:
                self._signed_cache = self._signed()
            except VerificationError as e:
                self._signed_cache = e
        if isinstance(self._signed_cache, VerificationError):
            raise self._signed_cache
        return self._signed_cache

    def _newest_installed(self) -> str:
        """The slot whose manifest has the highest director version ("a" when neither has one)."""
        versions = {}
        for slot in LETTERS:
            try:
                versions[slot] = self.slots.manifest(slot).director_version
            except VerificationError:
                continue
        return max(versions, key=versions.__getitem__) if versions else LETTERS[0]
