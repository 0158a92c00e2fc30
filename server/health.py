"""Whether this server can do its work: the parts `GET /readyz` checks, one probe each.

A probe returns nothing when its part works and raises `PartFailed` naming what is
wrong otherwise. `readiness` runs every probe and reports each part, so a 503 names
the failing part(s) and a monitoring system can alert on the right one.

| part   | usable when                                                          |
|--------|----------------------------------------------------------------------|
| store  | a read of the image repository's root metadata answers               |
| blobs  | the blob store answers (directories, or the S3 bucket) and its local staging dir takes a probe file |
| signer | the online keys are readable and the image timestamp is unexpired    |
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from tuf.api.dsse import SimpleEnvelope

from fleetcast.server.errors import BlobsUnavailable
from fleetcast.server.services import Services

logger = logging.getLogger(__name__)

ONLINE_KEYS: Final = ("image-online.pem", "director-online.pem")


class PartFailed(Exception):
    """A part of the server is not usable; the message says what and what to do."""


@dataclass(frozen=True)
class PartStatus:
    part: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Readiness:
    parts: tuple[PartStatus, ...]

    @property
    def ready(self) -> bool:
        return all(p.ok for p in self.parts)

    @property
    def failing(self) -> list[str]:
        return [p.part for p in self.parts if not p.ok]

    def document(self) -> dict[str, object]:
        return {
            "status": "ready" if self.ready else "not_ready",
            "failing": self.failing,
            "checks": {p.part: {"ok": p.ok, **({"detail": p.detail} if p.detail else {})} for p in self.parts},
        }


def probe_store(s: Services) -> None:
    try:
        root = s.store.get_metadata("image", "1.root.json")
    except Exception as e:
        raise PartFailed(f"the store does not answer ({type(e).__name__}: {e}); check {s.config.db_path}") from e
    if root is None:
        raise PartFailed("the store has no image root metadata; was the data dir replaced while serving?")


def probe_blobs(s: Services) -> None:
    try:
        s.blobs.check_ready()
    except BlobsUnavailable as e:
        raise PartFailed(e.message) from e


def probe_signer(s: Services, *, now: Callable[[], datetime.datetime] | None = None) -> None:
    for name in ONLINE_KEYS:
        path = s.config.keys_dir / name
        if not os.access(path, os.R_OK):
            raise PartFailed(f"signing key {path} is missing or unreadable; restore DATA/keys/ from a backup")
    try:
        timestamp = SimpleEnvelope.from_bytes(s.signer.metadata("image", "timestamp.json")).get_signed()
    except Exception as e:
        raise PartFailed(f"the image timestamp cannot be read ({type(e).__name__}: {e})") from e
    current = (now or _utc_now)()
    if timestamp.expires <= current:
        raise PartFailed(f"the image timestamp expired at {timestamp.expires.isoformat()}; "
                         "the timestamp refresher is not running (see --refresh-interval-s)")


PROBES: Final[Mapping[str, Callable[[Services], None]]] = {
    "store": probe_store, "blobs": probe_blobs, "signer": probe_signer,
}


def readiness(s: Services) -> Readiness:
    """Runs every probe (blocking: call it from a worker thread)."""
    parts = []
    for part, probe in PROBES.items():
        try:
            probe(s)
        except PartFailed as e:
            logger.warning("not ready part=%s reason=%s", part, e)
            parts.append(PartStatus(part, False, str(e)))
        else:
            parts.append(PartStatus(part, True))
    return Readiness(tuple(parts))


def timed_out(parts: Mapping[str, Callable[[Services], None]], timeout_s: float) -> Readiness:
    """What readiness reports when its probes did not finish in time."""
    detail = f"the checks did not finish within {timeout_s:g}s; the store or disk may be stuck"
    return Readiness(tuple(PartStatus(part, False, detail) for part in parts))


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
