"""The garbage collector's settings for a process that holds thousands of streams.

A server with 10,000 open watch streams (or a simulator with 10,000 devices) keeps
millions of long-lived objects. CPython's default thresholds (700, 10, 10) run a full
collection about every 70,000 allocations, and one full collection of such a heap took
0.6-1.4 s on the build machine, holding the event loop: a notice to 10,000 streams
allocates about half a million objects, so four to seven of those ran while the
notices went out. The settings below run the young collections 70x less often (a full
one at most every five million allocations), and what start-up built (modules,
keys, configuration) is frozen out of every collection. Figures: docs/benchmarks.md
("Notices").
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectorConfig:
    young_threshold: int = 50_000     # allocations between young collections (CPython: 700)
    middle_threshold: int = 10        # young collections per middle one (CPython's)
    old_threshold: int = 10           # middle collections per full one (CPython's)

    def __post_init__(self) -> None:
        if not 1 <= self.young_threshold <= 10_000_000 or self.middle_threshold < 1 or self.old_threshold < 1:
            raise ValueError("collector thresholds must be positive (young at most 10,000,000)")


def tune(config: CollectorConfig = CollectorConfig()) -> None:
    """Freezes what exists now out of every collection and sets the thresholds; call once
    start-up is done (it is process-wide)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(config.young_threshold, config.middle_threshold, config.old_threshold)
    logger.info("garbage collector tuned thresholds=%s frozen=%d", gc.get_threshold(), gc.get_freeze_count())
