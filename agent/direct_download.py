"""Artifacts straight from an object store or CDN, with the server's gRPC as fallback.

Before a download the agent asks the server where the artifact is
(`LocateArtifact`): a presigned S3 URL, a CDN URL, or nothing. The URL is not
trusted: the Downloader checks every byte against the signed sha256 and length, and
sends no device token there. It must be https (plain http only to loopback, the
rule of fleetcast.proto.addresses). A 403 means a presigned URL expired: the agent
asks once for a fresh one. Any other failure before the first byte (refused, 404,
5xx, a URL breaking the rules) switches this artifact to the gRPC Download for the
rest of this agent run; a connection cut mid-body is resumed from the URL with Range
by the Downloader.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Protocol

from fleetcast.agent.download import RangeClient, Transport
from fleetcast.agent.errors import DownloadError
from fleetcast.proto.addresses import is_loopback

logger = logging.getLogger(__name__)

MAX_URL_CHARS: Final = 8192


class Locator(Protocol):
    def locate(self, sha256: str) -> str:
        """A URL for the artifact, or "" for none."""
        ...


class DirectTransport:
    """`Transport` over located URLs; `fallback` (the gRPC Download) when there is none or it fails."""

    def __init__(self, locator: Locator, fallback: Transport, *, chunk_bytes: int = 256 * 1024,
                 timeout_s: float = 30.0, ca_file: Path | None = None) -> None:
        self._locator = locator
        self._fallback = fallback
        self._client = RangeClient(chunk_bytes=chunk_bytes, timeout_s=timeout_s, ca_file=ca_file)
        self._urls: dict[str, str] = {}
        self._failed: set[str] = set()    # artifacts whose URL failed: gRPC from now on

    def open(self, sha256: str, offset: int) -> Iterator[bytes]:
        url = "" if sha256 in self._failed else self._url(sha256, fresh=False)
        if not url:
            yield from self._fallback.open(sha256, offset)
            return
        try:
            response = self._client.get(url, offset)
            if response.status == 403:
                response.release_conn()
                logger.info("sha256=%s download URL refused (403, expired?): asking for a fresh one", sha256[:12])
                url = self._url(sha256, fresh=True)
                if not url:
                    raise DownloadError("the server has no download URL any more")
                response = self._client.get(url, offset)
            if response.status not in (200, 206):
                response.release_conn()
                raise DownloadError(f"download URL answered status {response.status}")
        except DownloadError as e:
            logger.warning("sha256=%s download URL failed (%s): using the gRPC download", sha256[:12], e)
            self._failed.add(sha256)
            yield from self._fallback.open(sha256, offset)
            return
        logger.debug("sha256=%s downloading from its URL offset=%d", sha256[:12], offset)
        yield from self._client.body(response, offset)

    def _url(self, sha256: str, *, fresh: bool) -> str:
        if fresh or sha256 not in self._urls:
            url = self._locator.locate(sha256)
            problem = _problem_with(url) if url else None
            if problem:
                logger.warning("sha256=%s refusing download URL: %s", sha256[:12], problem)
                url = ""
            self._urls[sha256] = url
        return self._urls[sha256]


def _problem_with(url: str) -> str | None:
    """Why a located URL may not be used, or None: https, or http to loopback only."""
    if len(url) > MAX_URL_CHARS:
        return f"it is longer than {MAX_URL_CHARS} characters"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return None
    return f"{url[:60]!r} is not https (plain http is allowed only to loopback)"
