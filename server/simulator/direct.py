"""Artifacts from the URL `LocateArtifact` hands out (a CDN or an object store), not the server.

The swarm's devices share one aiohttp session (a bounded connection pool). As on the
agent (`fleetcast.agent.direct_download`), the URL is not trusted: every byte is
checked against the signed length and sha256, and no device token is sent there.
"""

from __future__ import annotations

import hashlib
from typing import Final

import aiohttp

from fleetcast.server.simulator.verify import VerificationError

READ_BYTES: Final = 256 * 1024


class DirectDownloadError(Exception):
    """The URL did not serve the artifact (refused, not 200, cut): the device uses the gRPC Download."""


class DirectDownloads:
    def __init__(self, *, connections: int = 256, timeout_s: float = 600.0) -> None:
        self._connections = connections
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:    # made on first use, inside the running event loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        return self._session

    async def fetch(self, url: str, *, sha256: str, length: int) -> int:
        """Downloads and checks the whole artifact; returns its length."""
        digest, got = hashlib.sha256(), 0
        try:
            async with self._open().get(url) as response:
                if response.status != 200:
                    raise DirectDownloadError(f"download URL answered status {response.status}")
                async for data in response.content.iter_chunked(READ_BYTES):
                    got += len(data)
                    if got > length:
                        raise VerificationError(f"artifact {sha256[:12]} from its URL is longer than {length} bytes")
                    digest.update(data)
        except aiohttp.ClientError as e:
            raise DirectDownloadError(f"download URL failed: {e}") from e
        if got != length or digest.hexdigest() != sha256:
            raise VerificationError(f"artifact {sha256[:12]} from its URL arrived as {got} bytes with another sha256")
        return got

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
