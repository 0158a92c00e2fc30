"""The agent's data directory: its layout, durable writes and bounded reads.

```
DATA/device.json        token (0600)           DATA/state.json     the flow's saved state
DATA/trust/             TUF metadata as last trusted
DATA/downloads/<sha256>[.part]                 DATA/slots/{a,b}/   installed models
DATA/active             pointer file: "a" or "b"
DATA/telemetry.db       spool                  DATA/agent.sock     local API (0600)
DATA/agent.json         {"pid", "socket"} once the local API serves
```
Every file here is written whole or not at all: temp file in the same directory,
fsync, `os.replace`, fsync the directory. Every file read back is size-bounded: the
disk is a trust boundary too.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def device_json(self) -> Path:
        return self.root / "device.json"

    @property
    def state_json(self) -> Path:
        return self.root / "state.json"

    @property
    def trust(self) -> Path:
        return self.root / "trust"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def slots(self) -> Path:
        return self.root / "slots"

    @property
    def active_pointer(self) -> Path:
        return self.root / "active"

    @property
    def telemetry_db(self) -> Path:
        return self.root / "telemetry.db"

    @property
    def socket(self) -> Path:
        return self.root / "agent.sock"

    @property
    def agent_json(self) -> Path:
        return self.root / "agent.json"

    def create(self) -> "DataDir":
        """Creates the directory tree, private to the agent's user."""
        for path in (self.root, self.trust, self.downloads, self.slots):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        return self


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replaces `path` with `data`: readers see the old bytes or the new, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The whole file, refusing one larger than `max_bytes` (raises ValueError)."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path.name} is larger than {max_bytes} bytes")
    return data
