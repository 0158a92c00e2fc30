"""Network addresses in the wire contract: which hosts count as loopback.

Plaintext is allowed only to a loopback address (ADR 0005); the server, the agent and
the broker login all ask this one function.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for `localhost` and any loopback IP (127.0.0.0/8, ::1); names are not resolved."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
