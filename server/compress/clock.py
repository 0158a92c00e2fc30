"""The time the searches may take (`--time-limit`), and which of them it cut short.

Every search asks `expired` before each trial build and, once it is, stops and keeps
the best choice it has measured (`sensitivity.py`); the fixed steps after a search
(the final build, its measurement) still run, so a run ends a little after the limit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

DEFAULT_TIME_LIMIT_S = 120.0   # ResNet-18 `balanced` on 16 samples ends within 3 minutes on 2 cores


@dataclass
class SearchClock:
    limit_s: float = DEFAULT_TIME_LIMIT_S
    started: float = field(default_factory=time.monotonic)
    cut_short: list[str] = field(default_factory=list)   # searches stopped by the limit, in order

    def left_s(self) -> float:
        return max(0.0, self.limit_s - (time.monotonic() - self.started))

    def expired(self) -> bool:
        return self.left_s() <= 0.0

    def stop(self, search: str) -> bool:
        """True (and `search` recorded) when the limit has passed: the search must stop."""
        if not self.expired():
            return False
        if search not in self.cut_short:
            logger.info("time limit %.0fs reached during %s; keeping the best choice so far", self.limit_s, search)
            self.cut_short.append(search)
        return True
