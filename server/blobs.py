"""Content-addressed blob store on local disk: `blobs/sha256/ab/abcdef...`.

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
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, Final

# The agent keeps the dependency-free file primitives; the server reuses them rather
# than keeping a second copy.
from fleetcast.agent.datadir import fsync_dir
from fleetcast.server.errors import ArtifactNotFound, InvalidRequest, TooLarge

logger = logging.getLogger(__name__)

SHA256_PATTERN: Final = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(sha256: str) -> str:
    if not SHA256_PATTERN.fullmatch(sha256):
        raise InvalidRequest(f"{sha256[:80]!r} is not a sha256: use 64 lowercase hex digits")
    return sha256


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


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tmp_dir.mkdir(mode=0o700, exist_ok=True)
        (root / "sha256").mkdir(mode=0o700, exist_ok=True)

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / "sha256" / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def length(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError as e:
            raise ArtifactNotFound(f"no blob with sha256 {sha256}") from e

    def open(self, sha256: str) -> BinaryIO:
        try:
            return open(self.path(sha256), "rb")
        except FileNotFoundError as e:
            raise ArtifactNotFound(f"no blob with sha256 {sha256}") from e

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
