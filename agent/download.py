"""Resumable, length-bounded, hash-checked artifact downloads.

```
DATA/downloads/<sha256>.part   bytes so far (resumed from its length after a restart)
DATA/downloads/<sha256>        the complete, checked artifact
```
Files are named by the signed sha256 only. On resume the bytes already in the part
file are re-hashed to rebuild the digest state. More bytes than the signed length,
or a final digest that differs, deletes the part file and raises
VerificationError; a dropped connection is resumed from the current offset a few
times within one call before DownloadError (transient) is raised.

Transports share one small interface, `Transport.open(sha256, offset)`: gRPC
`Download` with the device token, HTTP `GET {base}/v1/artifacts/{sha256}` with a
`Range` header (urllib3), and `DirectTransport` (agent/direct_download.py): the URL
the server locates for the artifact (presigned S3 or CDN), falling back to gRPC.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import grpc
import urllib3

from fleetcast.agent.datadir import fsync_dir
from fleetcast.agent.errors import DownloadError, VerificationError
from fleetcast.proto.addresses import is_loopback
from fleetcast.proto.v1 import device_pb2

logger = logging.getLogger(__name__)

SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK_BYTES: Final = 1024 * 1024


class Transport(Protocol):
    """Yields an artifact's bytes from `offset`; raises DownloadError on transport trouble."""

    def open(self, sha256: str, offset: int) -> Iterator[bytes]: ...


class GrpcTransport:
    """`DeviceService.Download` with the device token."""

    def __init__(self, stub: object, token: str, *, timeout_s: float = 300.0, locate_timeout_s: float = 30.0) -> None:
        self._stub = stub
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout_s = timeout_s
        self._locate_timeout_s = locate_timeout_s

    def open(self, sha256: str, offset: int) -> Iterator[bytes]:
        request = device_pb2.DownloadRequest(sha256=sha256, offset=offset)
        expected = offset
        try:
            for chunk in self._stub.Download(request, metadata=self._metadata, timeout=self._timeout_s):
                if chunk.offset != expected:
                    raise DownloadError(f"chunk at offset {chunk.offset}, expected {expected}")
                expected += len(chunk.data)
                yield chunk.data
        except grpc.RpcError as e:
            raise DownloadError(f"gRPC download failed: {e.code().name}: {e.details()}") from e

    def locate(self, sha256: str) -> str:
        """`DeviceService.LocateArtifact`: a URL to GET the artifact from, or "" for none
        (also when the server is older and does not know the call, or does not answer)."""
        request = device_pb2.LocateRequest(sha256=sha256)
        try:
            return str(self._stub.LocateArtifact(request, metadata=self._metadata, timeout=self._locate_timeout_s).url)
        except grpc.RpcError as e:
            logger.info("sha256=%s no download URL (%s): using the gRPC download", sha256[:12], e.code().name)
            return ""


class RangeClient:
    """`GET url` with `Range: bytes=offset-` over one urllib3 pool, for the HTTP transports."""

    def __init__(self, *, chunk_bytes: int = 256 * 1024, timeout_s: float = 30.0, ca_file: Path | None = None) -> None:
        self.chunk_bytes = chunk_bytes
        context = ssl.create_default_context()   # the system's CAs, for an object store or CDN ...
        if ca_file is not None and ca_file.exists():
            context.load_verify_locations(cafile=str(ca_file))   # ... and the pinned server CA
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), retries=False, ssl_context=context)

    def get(self, url: str, offset: int, headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        """The response, body unread (release it or pass it to `body`); DownloadError if none came."""
        headers = dict(headers or {})
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            return self._pool.request("GET", url, headers=headers, preload_content=False)
        except urllib3.exceptions.HTTPError as e:
            raise DownloadError(f"HTTP download failed: {e}") from e

    def body(self, response: urllib3.BaseHTTPResponse, offset: int) -> Iterator[bytes]:
        """The bytes from `offset` of a 200 or 206 answer; DownloadError for any other status."""
        try:
            skip = _skip_for(response.status, offset)
            # read1 hands over whatever arrived, so a cut connection loses no bytes read
            while data := response.read1(self.chunk_bytes):
                if skip:
                    cut = min(skip, len(data))
                    data, skip = data[cut:], skip - cut
                if data:
                    yield data
        except urllib3.exceptions.HTTPError as e:
            raise DownloadError(f"HTTP download interrupted: {e}") from e
        finally:
            response.release_conn()


def _skip_for(status: int, offset: int) -> int:
    if status == 206 or (status == 200 and offset == 0):
        return 0
    if status == 200:
        return offset   # the server ignored Range: drop the bytes we already hold
    raise DownloadError(f"HTTP download answered status {status}")


class HttpTransport:
    """`GET {base_url}/v1/artifacts/{sha256}` with `Range: bytes=offset-` (urllib3)."""

    def __init__(self, base_url: str, token: str, *, chunk_bytes: int = 256 * 1024,
                 timeout_s: float = 30.0, ca_file: Path | None = None) -> None:
        self._base = base_url.rstrip("/")
        parts = urllib.parse.urlsplit(self._base)
        # The device token goes only where nobody on the path reads it: over TLS or to
        # loopback. A plain-HTTP object store gets no token (the bytes are hash-checked).
        self._token = token if parts.scheme == "https" or is_loopback(parts.hostname or "") else ""
        self._client = RangeClient(chunk_bytes=chunk_bytes, timeout_s=timeout_s, ca_file=ca_file)

    def open(self, sha256: str, offset: int) -> Iterator[bytes]:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        response = self._client.get(f"{self._base}/v1/artifacts/{sha256}", offset, headers)
        yield from self._client.body(response, offset)


@dataclass(frozen=True)
class DownloadConfig:
    max_artifact_bytes: int = 512 * 1024**2
    reconnects: int = 3          # resumptions within one fetch() after a dropped connection
    rate_bps: int = 0            # pace downloads to this many bytes per second; 0: no limit


class Downloader:
    def __init__(self, directory: Path, transport: Transport, config: DownloadConfig = DownloadConfig(),
                 *, stop: threading.Event | None = None) -> None:
        self.directory = directory
        self.transport = transport
        self.config = config
        self.stop = stop or threading.Event()

    def path_of(self, sha256: str) -> Path:
        if not SHA256_HEX.fullmatch(sha256):
            raise VerificationError(f"sha256 {sha256[:80]!r} is not 64 lowercase hex digits")
        return self.directory / sha256

    def fetch(self, sha256: str, length: int) -> Path:
        """The complete artifact's path; resumes a part file left by an earlier attempt."""
        final = self.path_of(sha256)
        if not 0 <= length <= self.config.max_artifact_bytes:
            raise VerificationError(f"artifact length {length} exceeds {self.config.max_artifact_bytes} bytes")
        if final.exists():
            if _digest_of(final, length + 1) == (sha256, length):
                return final
            logger.warning("sha256=%s complete file differs from its hash: fetching again", sha256[:12])
            final.unlink()
        part = final.with_name(f"{sha256}.part")
        progress = self._resume(part, length)
        resumed = progress.offset > 0
        drops = 0
        while progress.offset < length:
            try:
                self._append(part, sha256, length, progress)
            except DownloadError as e:
                drops += 1
                if drops > self.config.reconnects or self.stop.is_set():
                    raise
                logger.info("sha256=%s offset=%d reconnecting after: %s", sha256[:12], progress.offset, e)
                continue
            if progress.offset < length:
                drops += 1   # the stream ended early: resume from here
                if drops > self.config.reconnects:
                    raise DownloadError(f"stream ended at {progress.offset} of {length} bytes")
        if progress.digest.hexdigest() != sha256:
            part.unlink(missing_ok=True)
            if resumed:
                # The resumed bytes may be what changed (a disk fault): start once from zero.
                logger.warning("sha256=%s resumed download mismatched: starting over", sha256[:12])
                return self.fetch(sha256, length)
            raise VerificationError(f"downloaded bytes do not hash to the signed sha256 {sha256[:12]}")
        os.replace(part, final)
        fsync_dir(self.directory)
        logger.info("sha256=%s downloaded length=%d", sha256[:12], length)
        return final

    def discard(self, sha256: str) -> None:
        """Removes the artifact and any part file."""
        final = self.path_of(sha256)
        final.unlink(missing_ok=True)
        final.with_name(f"{sha256}.part").unlink(missing_ok=True)

    @staticmethod
    def _resume(part: Path, length: int) -> "_Progress":
        progress = _Progress(hashlib.sha256(), 0)
        try:
            size = part.stat().st_size
        except FileNotFoundError:
            return progress
        if size > length:
            part.unlink()
            return progress
        with open(part, "rb") as f:
            while chunk := f.read(_HASH_CHUNK_BYTES):
                progress.digest.update(chunk)
                progress.offset += len(chunk)
        logger.info("resuming part=%s offset=%d", part.name[:12], progress.offset)
        return progress

    def _append(self, part: Path, sha256: str, length: int, progress: "_Progress") -> None:
        """Appends what one connection yields; `progress` always matches the file."""
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        pace = _Pace(self.config.rate_bps, self.stop)
        with os.fdopen(fd, "ab") as f:
            try:
                for data in self.transport.open(sha256, progress.offset):
                    if self.stop.is_set():
                        raise DownloadError("the agent is stopping")
                    if progress.offset + len(data) > length:
                        f.close()
                        part.unlink(missing_ok=True)
                        raise VerificationError(
                            f"server sent more than the signed length of {length} bytes")
                    f.write(data)
                    progress.digest.update(data)
                    progress.offset += len(data)
                    pace.after(len(data))
            finally:
                if not f.closed:
                    f.flush()
                    os.fsync(f.fileno())


class _Pace:
    """Keeps one connection's average rate at or under `rate_bps` by sleeping between chunks.

    The sleep waits on the agent's stop event, so a stopping agent never sits it out.
    """

    def __init__(self, rate_bps: int, stop: threading.Event) -> None:
        self.rate_bps = rate_bps
        self.stop = stop
        self.start = time.monotonic()
        self.sent = 0

    def after(self, n: int) -> None:
        if self.rate_bps <= 0:
            return
        self.sent += n
        ahead_s = self.sent / self.rate_bps - (time.monotonic() - self.start)
        if ahead_s > 0:
            self.stop.wait(ahead_s)


@dataclass
class _Progress:
    digest: "hashlib._Hash"
    offset: int


def _digest_of(path: Path, max_bytes: int) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while size <= max_bytes and (chunk := f.read(_HASH_CHUNK_BYTES)):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
