"""Dashboard logins: roles, sessions, CSRF tokens and the failed-login throttle.

A login posts a token (the operator token or a viewer token) and gets a session
cookie: a random 256-bit id, HttpOnly, SameSite=Strict, Secure whenever the page was
served over TLS or off loopback. The server keeps sessions in memory (bounded; a
restart logs everyone out) keyed by the id's sha256. Each session has its own CSRF
token, sent back in a hidden field of every form that changes state and compared in
constant time. The login form itself is protected by a double-submit token (a
cookie and a hidden field that must match). Failed logins answer late and, past a
number per address and minute, with 429.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from fleetcast.server.errors import TooManyRequests

Role = Literal["operator", "viewer"]
COOKIE: Final = "fleetcast_session"
LOGIN_COOKIE: Final = "fleetcast_login"
MAX_ADDRESSES: Final = 10_000


@dataclass(frozen=True)
class Session:
    role: Role
    csrf: str
    created_at: float
    expires_at: float

    @property
    def can_change(self) -> bool:
        return self.role == "operator"


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()[:256]).hexdigest()


def same_token(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets (an empty expected value never matches)."""
    return bool(expected) and hmac.compare_digest(given.encode()[:512], expected.encode())


class Sessions:
    """Open sessions, bounded: past `max_sessions` the oldest is dropped."""

    def __init__(self, *, ttl_s: float, max_sessions: int, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._open: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._lock = threading.Lock()

    def open(self, role: Role) -> tuple[str, Session]:
        """A new session; returns the cookie value (never stored) and the session."""
        cookie = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(role=role, csrf=secrets.token_urlsafe(32), created_at=now, expires_at=now + self.ttl_s)
        with self._lock:
            self._open[_key(cookie)] = session
            while len(self._open) > self.max_sessions:
                self._open.popitem(last=False)
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        key = _key(cookie)
        with self._lock:
            session = self._open.get(key)
            if session is not None and session.expires_at <= self.clock():
                del self._open[key]
                return None
            return session

    def close(self, cookie: str | None) -> None:
        if cookie:
            with self._lock:
                self._open.pop(_key(cookie), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)


class LoginThrottle:
    """Failed logins per client address in a sliding window; past the limit, 429 until it slides."""

    def __init__(self, *, failures: int, window_s: float, clock: Callable[[], float]) -> None:
        self.failures = failures
        self.window_s = window_s
        self.clock = clock
        self._failed: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> collections.deque[float]:
        times = self._failed.get(address, collections.deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def check(self, address: str) -> None:
        """Raises TooManyRequests when `address` used up its failures in the window."""
        now = self.clock()
        with self._lock:
            times = self._recent(address, now)
            if len(times) >= self.failures:
                wait_s = int(times[0] + self.window_s - now) + 1
                raise TooManyRequests(f"{len(times)} failed logins from this address in the last "
                                      f"{self.window_s:.0f} s; wait {wait_s} s and check the token you paste")

    def failed(self, address: str) -> None:
        now = self.clock()
        with self._lock:
            times = self._recent(address, now)
            times.append(now)
            self._failed[address] = times
            self._failed.move_to_end(address)
            while len(self._failed) > MAX_ADDRESSES:
                self._failed.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failed.pop(address, None)
