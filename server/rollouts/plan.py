"""Which devices each stage of a rollout reaches, cohort by cohort.

A stage is written as a count (`5`) or a percentage of the target (`10%`); sizes are
cumulative, so `1,10%,50%,100%` reaches 1 device, then a tenth of the target, then half,
then all. Each cohort (hardware class x back ends x variant) gets its share of every
stage, rounded up, and at least one device from the first stage on: a cohort the new
version might hurt is represented in the canary, not first met at 100 %.

Within a cohort the order is a hash of (rollout, device), so plans are spread over the
fleet rather than following device names, and the same rollout plans the same way twice.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from fleetcast.server.errors import InvalidRequest

MAX_STAGES: Final = 20
_STAGE: Final = re.compile(r"(\d{1,6})(%?)")


@dataclass(frozen=True)
class StageSize:
    """One stage's cumulative size: `count` devices, or `percent` of the target."""

    count: int | None = None
    percent: float | None = None

    def devices(self, total: int) -> int:
        if self.count is not None:
            return min(self.count, total)
        return min(total, max(1, math.ceil(total * (self.percent or 0.0) / 100.0)))

    def text(self) -> str:
        return f"{self.count}" if self.count is not None else f"{self.percent:g}%"


def parse_stages(text: str) -> list[StageSize]:
    """`1,10%,50%,100%` -> stage sizes; raises InvalidRequest naming the bad part."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or len(parts) > MAX_STAGES:
        raise InvalidRequest(f"stages {text[:80]!r}: give 1-{MAX_STAGES} comma-separated sizes such as 1,10%,50%,100%")
    sizes = []
    for part in parts:
        m = _STAGE.fullmatch(part)
        if m is None or int(m.group(1)) == 0 or (m.group(2) and int(m.group(1)) > 100):
            raise InvalidRequest(f"stage {part[:20]!r} is not a device count (1, 25) or a percentage (1%-100%)")
        n = int(m.group(1))
        sizes.append(StageSize(percent=float(n)) if m.group(2) else StageSize(count=n))
    return sizes


@dataclass(frozen=True)
class Planned:
    """A targeted device and the cohort it belongs to."""

    device_id: str
    cohort: str


def cohort_of(*, hardware_class: str, backends: Sequence[str], variant: str) -> str:
    """The cohort key shown to operators: `rk3399/onnxruntime/int8`."""
    return f"{hardware_class}/{'+'.join(backends) or '-'}/{variant}"


def plan_stages(rollout_id: str, devices: Sequence[Planned], stages: Sequence[StageSize]) -> list[list[Planned]]:
    """The devices each stage adds (not cumulative), every device in exactly one stage.
    The last stage always takes what is left: a rollout ends with the whole target."""
    by_cohort: dict[str, list[Planned]] = {}
    for d in devices:
        by_cohort.setdefault(d.cohort, []).append(d)
    for members in by_cohort.values():
        members.sort(key=lambda d: hashlib.sha256(f"{rollout_id}/{d.device_id}".encode()).digest())
    total = len(devices)
    taken = {c: 0 for c in by_cohort}
    out: list[list[Planned]] = []
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        wanted = total if last else stage.devices(total)
        added: list[Planned] = []
        for cohort, members in sorted(by_cohort.items()):
            share = len(members) if last else min(len(members), max(1, math.ceil(wanted * len(members) / total)))
            share = max(share, taken[cohort])
            added += members[taken[cohort]:share]
            taken[cohort] = share
        out.append(added)
    return out


def summary(stages: Sequence[Sequence[Planned]]) -> list[Mapping[str, int]]:
    """Devices per cohort that each stage adds (the dry run's table)."""
    rows = []
    for stage in stages:
        counts: dict[str, int] = {}
        for d in stage:
            counts[d.cohort] = counts.get(d.cohort, 0) + 1
        rows.append(dict(sorted(counts.items())))
    return rows
