"""Verified device tokens from memory: a bounded cache in front of `Store.device_by_token`.

Every device call authenticates its bearer token; without this, each one is a store
query in a worker thread. An entry maps the token's sha256 to the device id it was
verified for, for at most `ttl_s`. A device's token changes only when it enrolls again
(`Fleet.enroll_device`): that drops the device's entry here and announces topic
"device-token" (detail: the device id) on the store, so the other replicas sharing the
database drop theirs (PostgreSQL LISTEN/NOTIFY, after the new token is committed); a
notice gap (topic "") drops every entry. A lookup that raced a drop is not kept (a
generation counter, as in `metadata_cache`), so an old token never outlives its notice.
The TTL bounds what a lost notice could cost.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from fleetcast.server.metadata_cache import Changes

TOPIC: Final = "device-token"


class CredentialCache:
    def __init__(self, *, max_entries: int = 200_000, ttl_s: float = 60.0, changes: Changes | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()   # token sha256 -> (device, expiry)
        self._by_device: dict[str, str] = {}
        self._max = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._generation = 0
        self.hits = 0
        self.misses = 0
        if changes is not None:
            changes.subscribe(self._on_change)

    def generation(self) -> int:
        """Read before the store lookup, handed to `keep`."""
        with self._lock:
            return self._generation

    def device_for(self, token_sha256: str) -> str | None:
        with self._lock:
            found = self._entries.get(token_sha256)
            if found is None or found[1] <= self._clock():
                self.misses += 1
                return None
            self.hits += 1
            return found[0]

    def keep(self, token_sha256: str, device_id: str, *, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return      # a drop happened since the lookup began: the token may be the old one
            old = self._by_device.pop(device_id, None)
            if old is not None:
                self._entries.pop(old, None)
            self._entries[token_sha256] = (device_id, self._clock() + self._ttl_s)
            self._entries.move_to_end(token_sha256)
            self._by_device[device_id] = token_sha256
            while len(self._entries) > self._max:
                _, (evicted, _) = self._entries.popitem(last=False)
                self._by_device.pop(evicted, None)

    def forget(self, device_id: str) -> None:
        """The device's token changed (or may have): its entry goes, and any lookup in flight is not kept."""
        with self._lock:
            self._generation += 1
            old = self._by_device.pop(device_id, None)
            if old is not None:
                self._entries.pop(old, None)

    def _on_change(self, topic: str, detail: str) -> None:
        if topic == TOPIC:
            self.forget(detail)
        elif topic == "":
            with self._lock:
                self._generation += 1
                self._entries.clear()
                self._by_device.clear()
