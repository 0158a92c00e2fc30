"""Bounded waits that fail with a message saying what was awaited and what was seen.

A wait never asserts on how long something took; the bound only stops a hung test.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A bounded wait ran out: the message says what was awaited and what was last seen."""


class WaitHopeless(AssertionError):
    """Raised by a probe when the awaited thing can no longer happen (a process exited):
    `wait_for` lets it through at once instead of waiting out its bound."""


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
    context: Callable[[], str] | None = None,
) -> T:
    """Calls `probe` until it returns something truthy; returns that value.

    Exceptions from the probe count as "not yet" (except `WaitHopeless`, raised at once)
    and the last one is shown on failure, with `context()` (for example the tail of a
    process log).
    """
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except WaitHopeless:
            raise
        except Exception as e:  # noqa: BLE001 - shown in the failure message
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            extra = f"\n{context()}" if context is not None else ""
            raise WaitTimeout(f"timed out after {timeout_s:.0f}s waiting for {what}; last seen: {last!r}{extra}")
        time.sleep(interval_s)


def port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, *, lines: int = 60, label: str | None = None) -> str:
    """The last lines of a log file, headed by its label, for failure messages."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"--- {label or path}: unreadable ({e}) ---"
    tail = "\n".join(text[-lines:])
    return f"--- last {min(lines, len(text))} lines of {label or path} ---\n{tail}\n--- end ---"
