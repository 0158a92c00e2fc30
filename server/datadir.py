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
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from fleetcast.server.blobs import fsync_dir

logger = logging.getLogger(__name__)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def ensure_token(path: Path) -> str:
    """Reads a secret token file, creating it (random, 0600) on first start."""
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    write_atomic(path, (token + "\n").encode(), mode=0o600)
    logger.info("token created path=%s", path)
    return token


def prepare(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)


def write_server_json(data_dir: Path, document: dict[str, Any]) -> None:
    write_atomic(data_dir / "server.json", (json.dumps(document, sort_keys=True) + "\n").encode())


def remove_server_json(data_dir: Path) -> None:
    (data_dir / "server.json").unlink(missing_ok=True)
