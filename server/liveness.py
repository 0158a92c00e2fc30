"""Liveness: when each device was last seen, and whether it is `online`, `late` or `offline`.

A device is seen when it enrolls, reports status, sends telemetry, and for as long as
its `WatchAssignments` stream is open: `Presence` keeps the set of open streams and
`touch_open` stamps all of them in one store write (`touch_devices`) every `touch_interval_s`, so a
quiet but connected device stays online without sending anything. A stopped agent's
stream ends (the agent's gRPC keepalive ends a stream to a vanished peer), its last
seen time stops moving, and the state follows from the age:

| age of last_seen                           | state   |
|--------------------------------------------|---------|
| <= expected_interval_s                     | online  |
| <= offline_after_s                         | late    |
| > offline_after_s, or never seen           | offline |
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

logger = logging.getLogger(__name__)

State = Literal["online", "late", "offline"]
STATES: Final[tuple[State, ...]] = ("online", "late", "offline")


@dataclass(frozen=True)
class LivenessConfig:
    expected_interval_s: float = 60.0   # a live device is seen at least this often
    offline_after_s: float = 300.0      # unseen this long: offline (between the two: late)

    def __post_init__(self) -> None:
        if not 0 < self.expected_interval_s < self.offline_after_s:
            raise ValueError("liveness needs 0 < expected_interval_s < offline_after_s")

    @property
    def touch_interval_s(self) -> float:
        """How often open watch streams are stamped: well inside the expected interval."""
        return self.expected_interval_s / 3


def state_of(last_seen: float | None, *, now: float, config: LivenessConfig) -> State:
    if last_seen is None:
        return "offline"
    age = now - last_seen
    if age <= config.expected_interval_s:
        return "online"
    if age <= config.offline_after_s:
        return "late"
    return "offline"


def document(last_seen: float | None, *, now: float, config: LivenessConfig) -> dict[str, Any]:
    """The `liveness` member of a device document."""
    return {
        "state": state_of(last_seen, now=now, config=config), "last_seen": last_seen, "as_of": now,
        "expected_interval_s": config.expected_interval_s, "offline_after_s": config.offline_after_s,
    }


class Toucher(Protocol):
    def touch_devices(self, device_ids: Sequence[str], at: float) -> None: ...


class Presence:
    """The devices with an open watch stream in this process (a count per device: streams may overlap)."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def watching(self, device_id: str) -> Iterator[None]:
        with self._lock:
            self._open[device_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open[device_id] -= 1
                if self._open[device_id] <= 0:
                    del self._open[device_id]

    def open_devices(self) -> list[str]:
        with self._lock:
            return sorted(self._open)

    def touch_open(self, store: Toucher, at: float) -> int:
        """Stamps every device with an open stream as seen at `at`; returns how many."""
        devices = self.open_devices()
        if devices:
            store.touch_devices(devices, at)   # one transaction, however many streams are open
        return len(devices)


async def run_toucher(presence: Presence, store: Toucher, *, interval_s: float, clock: Callable[[], float]) -> None:
    """Stamps open streams every `interval_s` until cancelled; a store failure is logged and retried."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            count = await asyncio.to_thread(presence.touch_open, store, clock())
            logger.debug("watch streams stamped count=%d", count)
        except Exception as e:  # the store may be briefly unusable; liveness must not stop
            logger.warning("cannot stamp watch streams error=%s", e)
