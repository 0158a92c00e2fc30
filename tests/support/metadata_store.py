"""An in-memory `MetadataStore` (fleetcast.server.signing) for unit tests."""

from __future__ import annotations

import threading


class MemoryMetadataStore:
    """Implements `fleetcast.server.signing.MetadataStore` with a dict."""

    def __init__(self) -> None:
        self._files: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def get_metadata(self, repository: str, name: str) -> bytes | None:
        with self._lock:
            return self._files.get((repository, name))

    def put_metadata(self, repository: str, name: str, data: bytes) -> None:
        with self._lock:
            self._files[(repository, name)] = bytes(data)

    def names(self, repository: str) -> list[str]:
        """Every name stored under one repository, sorted (for assertions)."""
        with self._lock:
            return sorted(name for repo, name in self._files if repo == repository)
