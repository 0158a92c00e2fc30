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
```
Every file here is written atomically: temp file in the same directory, fsync,
rename, fsync the directory.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

# The dependency-free file primitives live with the agent; the server reuses them.
from fleetcast.agent import datadir as agent_datadir

logger = logging.getLogger(__name__)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
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


def prepare(data_dir: Path) -> None:
    """Creates the data dir private to the server's user (0700): it holds the models,
    the database and the keys. An existing dir that others can read gets a warning."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = data_dir.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning("data dir %s has mode %o: others can read models and state; chmod 700 it", data_dir, mode)


def write_server_json(data_dir: Path, document: dict[str, Any]) -> None:
    write_atomic(data_dir / "server.json", (json.dumps(document, sort_keys=True) + "\n").encode())


def remove_server_json(data_dir: Path) -> None:
    (data_dir / "server.json").unlink(missing_ok=True)
