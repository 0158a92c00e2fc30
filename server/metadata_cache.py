"""Hot signed metadata from memory: a bounded cache in front of the store's metadata.

Only names that carry a version (`N.root.json`, `N.snapshot.json`, `N.targets.json`)
are cached: the signer never writes a new content under a name it already published
(every publish takes the next version), so a cached entry can never be stale, on this
server or on a replica sharing the database. `timestamp.json` and the device index
change in place and are always read from the store: one primary-key lookup, which
is what makes a replica see another replica's publish at once.
Writes go through to the store first, then into the cache.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Final

from fleetcast.server.signing import MetadataStore

VERSIONED: Final = re.compile(r"^\d{1,10}\.(root|snapshot|targets|bin-[0-9a-f]{2})\.json$")


class MetadataCache:
    """Implements `MetadataStore` over another one; keeps at most `max_bytes` of entries."""

    def __init__(self, store: MetadataStore, *, max_bytes: int = 64 * 1024**2) -> None:
        self._store = store
        self._max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_metadata(self, repository: str, name: str) -> bytes | None:
        key = (repository, name)
        if VERSIONED.fullmatch(name):
            with self._lock:
                data = self._entries.get(key)
                if data is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return data
                self.misses += 1
        data = self._store.get_metadata(repository, name)
        if data is not None and VERSIONED.fullmatch(name):
            self._keep(key, data)
        return data

    def put_metadata(self, repository: str, name: str, data: bytes) -> None:
        self._store.put_metadata(repository, name, data)
        if VERSIONED.fullmatch(name):
            self._keep((repository, name), bytes(data))

    def _keep(self, key: tuple[str, str], data: bytes) -> None:
        if len(data) > self._max_bytes:
            return
        with self._lock:
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
