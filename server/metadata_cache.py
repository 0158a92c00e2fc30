"""Hot signed metadata from memory: a bounded cache in front of the store's metadata.

Names that carry a version (`N.root.json`, `N.snapshot.json`, `N.targets.json`) are
always cached: the signer never writes a new content under a name it already
published (every publish takes the next version under the store's signing lock), so
such an entry is never stale, on this server or on a replica sharing the database.

Given `changes` (the store, which announces every metadata write to the other store
instances: PostgreSQL LISTEN/NOTIFY), the names that change in place (`timestamp.json`)
are cached too, and dropped when a notice says another replica
wrote them; a notice gap (topic "") drops them all. A read that raced a write or a
notice is not kept (a generation counter), so a stale copy never outlives its notice.
Inside `publishing(...)` the signer reads them from the store: what it signs next is
computed from the database, never from a copy a notice has not reached yet.
Without `changes` they are always read from the store (one primary-key lookup).
Writes go through to the store first, then into the cache.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Final, Protocol

from fleetcast.server.signing import MetadataStore

VERSIONED: Final = re.compile(r"^\d{1,10}\.(root|snapshot|targets|bin-[0-9a-f]{2})\.json$")


class Changes(Protocol):
    """What the cache needs of the store's change notices (`Store.subscribe`)."""

    def subscribe(self, listener: Callable[[str, str], None]) -> None: ...


class MetadataCache:
    """Implements `MetadataStore` over another one; keeps at most `max_bytes` of entries."""

    def __init__(self, store: MetadataStore, *, max_bytes: int = 64 * 1024**2, changes: Changes | None = None) -> None:
        self._store = store
        self._max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._generation = 0        # bumped by every in-place write or drop
        self._mutable = changes is not None
        self._publishers = threading.local()
        self.hits = 0
        self.misses = 0
        if changes is not None:
            changes.subscribe(self._on_change)

    def _cacheable(self, name: str) -> bool:
        return VERSIONED.fullmatch(name) is not None or (self._mutable and not self._publishing())

    def _publishing(self) -> bool:
        return getattr(self._publishers, "depth", 0) > 0

    @contextmanager
    def publishing(self, lock: AbstractContextManager[Any]) -> Iterator[None]:
        """Holds `lock` (the store's signing lock); meanwhile this thread reads in-place names from the store."""
        with lock:
            self._publishers.depth = getattr(self._publishers, "depth", 0) + 1
            try:
                yield
            finally:
                self._publishers.depth -= 1

    def get_metadata(self, repository: str, name: str) -> bytes | None:
        key = (repository, name)
        cacheable = self._cacheable(name)
        with self._lock:
            generation = self._generation
            if cacheable:
                data = self._entries.get(key)
                if data is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return data
                self.misses += 1
        data = self._store.get_metadata(repository, name)
        if data is not None and (self._mutable or VERSIONED.fullmatch(name)):
            self._keep(key, data, generation=None if VERSIONED.fullmatch(name) else generation)
        return data

    def put_metadata(self, repository: str, name: str, data: bytes) -> None:
        self._store.put_metadata(repository, name, data)
        if VERSIONED.fullmatch(name):
            self._keep((repository, name), bytes(data))
        elif self._mutable:
            with self._lock:
                self._generation += 1   # a read of the old content in flight must not be kept
            self._keep((repository, name), bytes(data))

    def _on_change(self, topic: str, detail: str) -> None:
        if topic == "":
            with self._lock:
                self._generation += 1
                for key in [k for k in self._entries if not VERSIONED.fullmatch(k[1])]:
                    self._bytes -= len(self._entries.pop(key))
        elif topic == "metadata":
            repository, _, name = detail.partition("\n")
            if not VERSIONED.fullmatch(name):
                self._drop((repository, name))

    def _drop(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._generation += 1
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old)

    def _keep(self, key: tuple[str, str], data: bytes, *, generation: int | None = None) -> None:
        if len(data) > self._max_bytes:
            return
        with self._lock:
            if generation is not None and generation != self._generation:
                return   # written or dropped since this copy was read: it may be stale
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._entries[key] = data
            self._bytes += len(data)
            while self._bytes > self._max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped)

    @property
    def size_bytes(self) -> int:
        return self._bytes
