"""Who may call the H5 bridge: origins, their methods, rate limits and input caps.

Deny by default. A call is served only when every check below passes, in this order
(the first refusal is the answer):

1. `Host` is exactly the bridge's own address (`127.0.0.1:PORT`): a page whose name
   was rebound to 127.0.0.1 sends its own name and is refused (DNS rebinding).
2. `Origin` is one of the configured origins, compared as exact scheme+host+port
   strings: never a suffix, a prefix or a wildcard; `null` never matches.
3. The per-session token the app injected into the page is present and equal.
4. The method is on the origin's list, the origin is under its rate limit, and the
   input is under its size cap.

An origin is given as `--bridge-allow-origin "ORIGIN [methods=run,info] [rate=N]
[max-input-bytes=N]"`; `rate` is calls per second with a burst of the same size.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from fleetcast.agent.bridge_frames import BridgeError

METHODS: Final = ("hello", "listModels", "info", "run")
DEFAULT_MAX_INPUT_BYTES: Final = 16 * 1024**2
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class PolicyError(ValueError):
    """An origin setting that cannot work; the message says which and why."""


@dataclass(frozen=True)
class OriginPolicy:
    origin: str                                   # canonical: scheme://host[:port], default port left out
    methods: frozenset[str] = frozenset(METHODS)
    rate_per_s: float = 0.0                       # 0: no limit
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES


def canonical_origin(text: str) -> str:
    """`scheme://host[:port]` as a browser sends it in `Origin`; raises PolicyError."""
    parts = urlsplit(text.strip())
    try:
        port = parts.port
    except ValueError as e:
        raise PolicyError(f"origin {text!r}: {e}") from e
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise PolicyError(f"origin {text!r} must be http:// or https:// with a host, e.g. https://app.example")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise PolicyError(f"origin {text!r} must be scheme://host[:port] only, no path, query or user")
    if "*" in parts.netloc:
        raise PolicyError(f"origin {text!r}: wildcards are not allowed; name each origin")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def parse_origin(text: str) -> OriginPolicy:
    """One `--bridge-allow-origin` value: the origin, then optional key=value settings."""
    words = text.split()
    if not words:
        raise PolicyError("empty --bridge-allow-origin: give an origin such as https://app.example")
    origin, settings = words[0], words[1:]
    values: dict[str, object] = {"origin": canonical_origin(origin)}
    for setting in settings:
        key, sep, value = setting.partition("=")
        try:
            if key == "methods" and sep:
                methods = frozenset(m for m in value.split(",") if m)
                unknown = methods - set(METHODS)
                if unknown:
                    raise PolicyError(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
                values["methods"] = methods | {"hello"}    # every allowed page may ask what it may do
            elif key == "rate" and sep:
                values["rate_per_s"] = float(value.removesuffix("/s"))
            elif key == "max-input-bytes" and sep:
                values["max_input_bytes"] = int(value)
            else:
                raise PolicyError(f"unknown setting {setting!r}; use methods=, rate= or max-input-bytes=")
        except ValueError as e:
            raise PolicyError(f"--bridge-allow-origin {text!r}: {e}") from e
    policy = OriginPolicy(**values)  # type: ignore[arg-type]
    if policy.rate_per_s < 0 or policy.max_input_bytes <= 0:
        raise PolicyError(f"--bridge-allow-origin {text!r}: rate must be >= 0 and max-input-bytes > 0")
    return policy


def parse_origins(texts: Iterable[str]) -> tuple[OriginPolicy, ...]:
    policies = tuple(parse_origin(t) for t in texts)
    seen = [p.origin for p in policies]
    if len(set(seen)) != len(seen):
        raise PolicyError("an origin is given twice in --bridge-allow-origin")
    return policies


class RateLimiter:
    """A token bucket per origin: `rate` calls per second, bursts of the same size."""

    def __init__(self, policies: Iterable[OriginPolicy], clock=time.monotonic) -> None:  # noqa: ANN001
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, list[float]] = {
            p.origin: [max(p.rate_per_s, 1.0), clock()] for p in policies if p.rate_per_s > 0}
        self._rates = {p.origin: p.rate_per_s for p in policies if p.rate_per_s > 0}

    def take(self, origin: str) -> None:
        """Spends one call of `origin`'s budget; raises RESOURCE_EXHAUSTED past it."""
        rate = self._rates.get(origin)
        if rate is None:
            return
        with self._lock:
            bucket = self._buckets[origin]
            now = self._clock()
            bucket[0] = min(max(rate, 1.0), bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
            if bucket[0] < 1.0:
                raise BridgeError("RESOURCE_EXHAUSTED",
                                  f"this origin is limited to {rate:g} calls per second; retry later")
            bucket[0] -= 1.0


class Gate:
    """The checks every request passes before any frame is read."""

    def __init__(self, *, address: str, token: str, policies: Iterable[OriginPolicy]) -> None:
        self.address = address           # "127.0.0.1:PORT", the only Host accepted
        self._token = token.encode()
        self.policies: Mapping[str, OriginPolicy] = {p.origin: p for p in policies}
        self.limiter = RateLimiter(self.policies.values())

    def admit(self, *, host: str | None, origin: str | None, token: str | None) -> OriginPolicy:
        """The caller's policy; raises PERMISSION_DENIED naming the failed check."""
        if host != self.address:
            raise BridgeError("PERMISSION_DENIED",
                              f"Host {str(host)[:100]!r} is not this bridge ({self.address}): refused")
        policy = self.policies.get(origin or "")
        if policy is None:
            raise BridgeError("PERMISSION_DENIED", f"origin {str(origin)[:100]!r} is not allowed on this bridge")
        if not token or not hmac.compare_digest(token.encode(), self._token):
            raise BridgeError("PERMISSION_DENIED",
                              "missing or wrong bridge token: the app injects it into the page")
        return policy

    def check_call(self, policy: OriginPolicy, method: str, input_bytes: int) -> None:
        if method not in METHODS:
            raise BridgeError("NOT_FOUND", f"no bridge method {method[:64]!r}; known: {', '.join(METHODS)}")
        if method not in policy.methods:
            raise BridgeError("PERMISSION_DENIED", f"method {method!r} is not allowed for {policy.origin}")
        if input_bytes > policy.max_input_bytes:
            raise BridgeError("RESOURCE_EXHAUSTED", f"input of {input_bytes} bytes is over this origin's "
                              f"cap of {policy.max_input_bytes} bytes")
        self.limiter.take(policy.origin)
