"""Enrollment tokens: the fleet-wide one in DATA/enroll-token and the ones operators make.

The fleet token admits any new device id, forever, into the group the device asks
for. An operator token (`fleetcast enroll-token create`) can be limited to a number
of uses, an expiry and a group. Neither kind ever re-issues a device that already
holds a live credential: that takes the operator's re-provisioning approval or the
device's own key (`fleet.Fleet.enroll`). Tokens are stored only as sha256.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Final

from fleetcast.server.errors import InvalidRequest, Unauthenticated
from fleetcast.server.store import EnrollToken, Store

MAX_TOKEN_CHARS: Final = 256
MAX_EXPIRY_S: Final = 366 * 86400.0
_DURATION: Final = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhd]?)$")
_UNIT_S: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_duration(text: str) -> float:
    """'24h', '30m', '7d', '90' (seconds) -> seconds; raises InvalidRequest."""
    match = _DURATION.fullmatch(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise InvalidRequest(f"duration {text[:40]!r} is not valid: use for example 90s, 30m, 24h or 7d")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass(frozen=True)
class Admission:
    """What a valid enroll token allows: the group it pins ("" : the device's choice)."""

    group: str
    token_sha256: str | None   # None: the fleet token (nothing to use up)


class EnrollTokens:
    def __init__(self, *, store: Store, fleet_token: str) -> None:
        self.store = store
        self._fleet_token = fleet_token

    def create(self, *, group: str = "", expires_s: float | None = None,
               uses: int | None = None) -> tuple[str, EnrollToken]:
        """A new token (returned once, never stored in clear) and its record."""
        if expires_s is not None and not 0 < expires_s <= MAX_EXPIRY_S:
            raise InvalidRequest(f"expires must be between 1 second and {MAX_EXPIRY_S / 86400:.0f} days")
        if uses is not None and not 0 < uses <= 1_000_000:
            raise InvalidRequest("uses must be between 1 and 1000000 (leave it out for no limit)")
        token = "fcet_" + secrets.token_hex(24)
        now = time.time()
        digest = hash_token(token)
        record = EnrollToken(token_sha256=digest, name="et-" + digest[:12], group=group, created_at=now,
                             expires_at=None if expires_s is None else now + expires_s, uses_left=uses)
        self.store.add_enroll_token(record)
        return token, record

    def check(self, token: str) -> Admission:
        """Raises Unauthenticated unless `token` is the fleet token or a live operator token.
        Uses nothing up: `use` does that once the enrollment is otherwise accepted."""
        given = token[:MAX_TOKEN_CHARS]
        if hmac.compare_digest(given.encode(), self._fleet_token.encode()):
            return Admission(group="", token_sha256=None)
        digest = hash_token(given)
        now = time.time()
        for record in self.store.enroll_tokens():
            if hmac.compare_digest(record.token_sha256, digest):
                if record.expires_at is not None and record.expires_at <= now:
                    raise Unauthenticated(f"enroll token {record.name} expired: make a new one with "
                                          "`fleetcast enroll-token create`")
                if record.uses_left is not None and record.uses_left <= 0:
                    raise Unauthenticated(f"enroll token {record.name} is used up: make a new one with "
                                          "`fleetcast enroll-token create`")
                return Admission(group=record.group, token_sha256=digest)
        raise Unauthenticated("enrollment token is not valid: give the agent the server's enroll-token file "
                              "or one made by `fleetcast enroll-token create`")

    def use(self, admission: Admission) -> None:
        """Takes one use (atomically in the store); raises Unauthenticated when none is left."""
        if admission.token_sha256 is None:
            return
        if self.store.use_enroll_token(admission.token_sha256, time.time()) is None:
            raise Unauthenticated("enroll token expired or was used up meanwhile: make a new one with "
                                  "`fleetcast enroll-token create`")
