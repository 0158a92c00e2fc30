"""The server's data directory and the files in it other tools read.

```
DATA/
  fleetcast.db       the store (SQLite)
  blobs/             content-addressed artifacts
  keys/              signing keys (0700, keys 0600; signing.py)
  operator-token     REST API bearer token (0600)
  enroll-token       token devices exchange for their own (0600)
  trust-root.json    what the operator copies to devices
  server.json        {"http", "grpc", "pid"} once the server serves
  server.lock        held (flock) by the one server using this dir; holds its pid
```
Every file here is written atomically: temp file in the same directory, fsync,
rename, fsync the directory, and private to the server's user (files 0600, dirs
0700, whatever the umask). One server per data dir: `lock()` takes an exclusive
`flock` on `server.lock` before anything else is written, and a second server
that finds it held exits without touching the first one's files.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Final

# The dependency-free file primitives live with the agent; the server reuses them.
from fleetcast.agent import datadir as agent_datadir
from fleetcast.server.errors import DataDirInUse, DataDirShared

logger = logging.getLogger(__name__)

LOCK_NAME: Final = "server.lock"
PRIVATE_UMASK: Final = 0o077   # what the server runs under: files 0600, dirs 0700


class DataDirLock:
    """The exclusive lock on one data dir, held while the server runs (released on close or exit)."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "DataDirLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lock(data_dir: Path) -> DataDirLock:
    """Takes the data dir's exclusive lock; raises DataDirInUse when another server holds it.

    Nothing else in the dir is read or written before this succeeds.
    """
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(
            f"data dir {data_dir} is in use by another fleetcast server (pid {holder}); "
            "stop it first or give this server its own --data"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.fchmod(fd, 0o600)
    return DataDirLock(fd, path)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replaces `path` atomically (temp file, fsync, rename, fsync the dir)."""
    agent_datadir.write_atomic(path, data, mode=mode)


def ensure_token(path: Path) -> str:
    """Reads a secret token file, creating it (random, 0600) on first start."""
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_hex(32)   # hex: never starts with "-", so it passes safely as a CLI argument
    write_atomic(path, (token + "\n").encode(), mode=0o600)
    logger.info("token created path=%s", path)
    return token


def prepare(data_dir: Path, *, allow_shared: bool = False) -> None:
    """Creates the data dir private to the server's user (0700): it holds the models,
    the database and the keys. An existing dir that others can read or write is refused
    (DataDirShared) unless `allow_shared` (`--allow-shared-data-dir`), then only warned about."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = data_dir.stat().st_mode & 0o777
    if mode & 0o077:
        if not allow_shared:
            raise DataDirShared(
                f"data dir {data_dir} has mode {mode:o}: other users can read its models, database and keys; "
                f"run 'chmod 700 {data_dir}' or pass --allow-shared-data-dir"
            )
        logger.warning("data dir %s has mode %o: others can read models and state; chmod 700 it", data_dir, mode)


def write_server_json(data_dir: Path, document: dict[str, Any]) -> None:
    write_atomic(data_dir / "server.json", (json.dumps(document, sort_keys=True) + "\n").encode())


def remove_server_json(data_dir: Path) -> None:
    (data_dir / "server.json").unlink(missing_ok=True)
