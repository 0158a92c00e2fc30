"""Content-addressed blob stores: the `Blobs` protocol, local disk, and `open_blobs(url)`.

Every store keeps one layout, `sha256/ab/abcdef...` (`blob_key`), on disk under
DATA/blobs/ (`LocalBlobs`, the default) or under an S3 prefix (`S3Blobs` in
`fleetcast.server.s3blobs`, chosen with `--blobs s3://bucket/prefix`), so a CDN in
front of either serves the same paths.

Uploads are staged as local temp files (`StagedFile`, hashed and counted as they
grow) in the store's scratch dir `tmp_dir`, then committed; a blob appears under its
content address whole or not at all.

For `LocalBlobs`:

Every blob is written as a temp file in `blobs/tmp/` (same file system), fsynced,
then renamed into place and the directory fsynced, so a crash leaves either the
whole blob or nothing under its name. Names come from our own hashes, never from
the network: `path()` accepts only 64 lowercase hex digits. Files are 0600 and dirs
0700 whatever the umask.

A crash between writing a blob and recording it leaves a blob nothing refers to;
`sweep_orphans` (at start) removes those older than a grace period, so an upload in
flight (in another replica, say) never loses its blob.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, Final, Protocol

# The agent keeps the dependency-free file primitives; the server reuses them rather
# than keeping a second copy.
from fleetcast.agent.datadir import fsync_dir
from fleetcast.server.errors import ArtifactNotFound, BlobsUnavailable, InvalidRequest, TooLarge

logger = logging.getLogger(__name__)

SHA256_PATTERN: Final = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(sha256: str) -> str:
    if not SHA256_PATTERN.fullmatch(sha256):
        raise InvalidRequest(f"{sha256[:80]!r} is not a sha256: use 64 lowercase hex digits")
    return sha256


def blob_key(sha256: str) -> str:
    """Where a blob lives below the store's root or prefix (and a CDN's base URL)."""
    check_sha256(sha256)
    return f"sha256/{sha256[:2]}/{sha256}"


class Blobs(Protocol):
    """What the server needs of a blob store. Implementations raise only InvalidRequest
    (a name that is not a sha256), ArtifactNotFound, TooLarge and BlobsUnavailable."""

    tmp_dir: Path   # local scratch (same disk as staging) for uploads and build work

    def exists(self, sha256: str) -> bool: ...

    def length(self, sha256: str) -> int: ...

    def open(self, sha256: str, offset: int = 0) -> BinaryIO:
        """The blob's bytes from `offset`, as a readable file object (close it)."""
        ...

    def file_path(self, sha256: str) -> Path | None:
        """The blob as a file on this disk (served with sendfile), or None when kept elsewhere."""
        ...

    def local_file(self, sha256: str) -> AbstractContextManager[Path]:
        """A local file holding the blob while the context is open (a temp copy if need be)."""
        ...

    def stage(self, limit_bytes: int) -> StagedFile: ...

    async def stage_stream(self, chunks: AsyncIterator[bytes], limit_bytes: int) -> StagedFile: ...

    def commit(self, staged: StagedFile) -> tuple[str, int]:
        """Stores a finished staged file under its content address; returns (sha256, length)."""
        ...

    def put_bytes(self, data: bytes) -> tuple[str, int]: ...

    def put_file(self, source: Path) -> tuple[str, int]: ...

    def sweep_temp(self) -> int:
        """Removes this process's local leftovers of a crash (call before serving)."""
        ...

    def sweep_orphans(self, referenced: Callable[[str], bool], *, grace_s: float, now: float | None = None) -> int:
        """Removes blobs (and shared temp objects) nothing refers to, older than `grace_s`."""
        ...

    def check_ready(self) -> None:
        """Raises BlobsUnavailable unless blobs can be read and written now (the readiness probe)."""
        ...

    def presigned_url(self, sha256: str, *, expires_s: int) -> str | None:
        """A URL a device can GET the blob from without the server, or None when the store has none."""
        ...


def open_blobs(url: str, *, data_blobs_dir: Path, region: str | None = None) -> Blobs:
    """The blob store `--blobs` names: "" for DATA/blobs/, a directory, or `s3://bucket/prefix`.

    S3 endpoint, region and credentials come from the AWS SDK's standard environment
    variables and files (fleetcast.server.s3blobs); the URL never carries secrets.
    """
    if not url:
        return LocalBlobs(data_blobs_dir)
    if url.startswith("s3://"):
        from fleetcast.server.s3blobs import S3Blobs, parse_s3_url

        bucket, prefix = parse_s3_url(url)
        return S3Blobs.connect(bucket=bucket, prefix=prefix, tmp_dir=data_blobs_dir / "tmp", region=region)
    if "://" in url:
        raise InvalidRequest(f"--blobs {url[:80]!r} is not a blob store: use a directory or s3://BUCKET/PREFIX")
    return LocalBlobs(Path(url))


class StagedFile:
    """A temp file being written in the blob store, hashed and counted as it grows."""

    def __init__(self, path: Path, limit_bytes: int) -> None:
        self.path = path
        self.limit_bytes = limit_bytes
        self.length = 0
        self._hash = hashlib.sha256()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        assert self._file is not None, "staged file already closed"
        if self.length + len(data) > self.limit_bytes:
            raise TooLarge(
                f"upload is larger than the server's limit of {self.limit_bytes} bytes; "
                "compress the model first or raise max_upload_bytes"
            )
        self._file.write(data)
        self._hash.update(data)
        self.length += len(data)

    def finish(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)


class Staging:
    """Staging, shared by every store: temp files in `tmp_dir`, handed to `commit`."""

    tmp_dir: Path

    def commit(self, staged: StagedFile) -> tuple[str, int]:
        raise NotImplementedError

    def stage(self, limit_bytes: int) -> StagedFile:
        return StagedFile(self.tmp_dir / f"{secrets.token_hex(12)}.part", limit_bytes)

    async def stage_stream(self, chunks: AsyncIterator[bytes], limit_bytes: int) -> StagedFile:
        """Writes an incoming stream to a staged file; nothing is left behind on error."""
        staged = self.stage(limit_bytes)
        try:
            async for chunk in chunks:
                staged.write(chunk)
            staged.finish()
        except BaseException:
            staged.discard()
            raise
        return staged

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        staged = self.stage(len(data))
        try:
            staged.write(data)
            return self.commit(staged)
        except BaseException:
            staged.discard()
            raise

    def put_file(self, source: Path) -> tuple[str, int]:
        """Copies a file (for example a compressed variant) into the store."""
        staged = self.stage(source.stat().st_size)
        try:
            with open(source, "rb") as f:
                while chunk := f.read(1024 * 1024):
                    staged.write(chunk)
            return self.commit(staged)
        except BaseException:
            staged.discard()
            raise

    def sweep_temp(self) -> int:
        """Removes what a crash left in the temp dir (call before serving); returns how many."""
        removed = 0
        for leftover in self.tmp_dir.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def check_scratch(self) -> None:
        if not self.tmp_dir.is_dir():
            raise BlobsUnavailable(f"blob directory {self.tmp_dir} is missing; restore it or restart the server")
        try:
            with tempfile.NamedTemporaryFile(dir=self.tmp_dir, prefix="readyz-", suffix=".part") as f:
                f.write(b"probe")
                f.flush()
        except OSError as e:
            raise BlobsUnavailable(f"cannot write blobs under {self.tmp_dir} ({e.strerror}); "
                                   "check the disk and permissions") from e


class LocalBlobs(Staging):
    """Blobs under one local directory: `ROOT/sha256/ab/abcdef...`, staged in `ROOT/tmp/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tmp_dir.mkdir(mode=0o700, exist_ok=True)
        (root / "sha256").mkdir(mode=0o700, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / blob_key(sha256)

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def length(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError as e:
            raise ArtifactNotFound(f"no blob with sha256 {sha256}") from e

    def open(self, sha256: str, offset: int = 0) -> BinaryIO:
        try:
            f = open(self.path(sha256), "rb")
        except FileNotFoundError as e:
            raise ArtifactNotFound(f"no blob with sha256 {sha256}") from e
        f.seek(offset)
        return f

    def file_path(self, sha256: str) -> Path | None:
        return self.path(sha256)

    @contextmanager
    def local_file(self, sha256: str) -> Iterator[Path]:
        path = self.path(sha256)
        if not path.is_file():
            raise ArtifactNotFound(f"no blob with sha256 {sha256}")
        yield path

    def presigned_url(self, sha256: str, *, expires_s: int) -> str | None:
        return None   # devices reach local blobs through the server (or a CDN in front of it)

    def check_ready(self) -> None:
        folder = self.root / "sha256"
        if not folder.is_dir():
            raise BlobsUnavailable(f"blob directory {folder} is missing; restore it or restart the server")
        self.check_scratch()

    def commit(self, staged: StagedFile) -> tuple[str, int]:
        """Moves a finished staged file to its content address; returns (sha256, length)."""
        staged.finish()
        sha256, length = staged.sha256, staged.length
        final = self.path(sha256)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        os.replace(staged.path, final)
        fsync_dir(final.parent)
        logger.debug("blob stored sha256=%s length=%d", sha256, length)
        return sha256, length

    def sweep_orphans(self, referenced: Callable[[str], bool], *, grace_s: float,
                      now: float | None = None) -> int:
        """Removes blobs `referenced(sha256)` says nothing refers to, last written more than
        `grace_s` ago (call at start); returns how many. Files not named by a sha256 are left alone."""
        cutoff = (time.time() if now is None else now) - grace_s
        removed = 0
        for prefix in (self.root / "sha256").iterdir():
            if not prefix.is_dir():
                continue
            for blob in prefix.iterdir():
                if not (SHA256_PATTERN.fullmatch(blob.name) and blob.name.startswith(prefix.name) and blob.is_file()):
                    continue
                if blob.stat().st_mtime >= cutoff or referenced(blob.name):
                    continue
                blob.unlink(missing_ok=True)
                removed += 1
                logger.info("orphan blob removed sha256=%s", blob.name)
        return removed
