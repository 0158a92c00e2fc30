"""Plain-text tables for people: the CLI's output when `--json` is not given."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

EMPTY = "-"


def cell(value: Any) -> str:
    """One value as table text: None and empty become `-`."""
    if value is None or value == "" or value == () or value == []:
        return EMPTY
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, headers in capitals, no trailing spaces."""
    texts = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in texts:
        widths = [max(w, len(t)) for w, t in zip(widths, row, strict=True)]
    lines = [[h.upper() for h in headers], *texts]
    return "\n".join(
        "  ".join(t.ljust(w) for t, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def size(n_bytes: int | None) -> str:
    """A byte count for people: 1.2 MiB."""
    if n_bytes is None:
        return EMPTY
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """`key: value` lines, keys aligned."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k + ':':<{width + 1}} {cell(v)}" for k, v in pairs)
