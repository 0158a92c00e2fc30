"""Latency histogram layout shared by the agent (which counts) and the server (which sums).

Buckets are fixed so histograms from any device and any window add up by plain
element-wise sums; percentiles are read back from the summed counts
(`fleetcast.server.fleetview.quantile`, interpolated within a bucket).
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Sequence
from typing import Final

# Upper bounds in milliseconds, about 10 per decade from 20 us to 60 s.
LATENCY_BOUNDS_MS: Final[tuple[float, ...]] = tuple(
    round(base * 10.0**exp, 4)
    for exp in range(-2, 5)
    for base in (1.0, 1.25, 1.6, 2.0, 2.5, 3.2, 4.0, 5.0, 6.4, 8.0)
    if base * 10.0**exp <= 60_000
)[2:]
BUCKETS: Final = len(LATENCY_BOUNDS_MS) + 1  # the last bucket counts everything slower


def bucket_of(latency_ms: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)


def empty() -> list[int]:
    return [0] * BUCKETS


def merge(into: list[int], counts: Sequence[int]) -> list[int]:
    if len(counts) != BUCKETS:
        raise ValueError(f"histogram has {len(counts)} buckets, expected {BUCKETS}")
    into[:] = map(operator.add, into, map(int, counts))   # element-wise in C: the ingest hot path
    return into

