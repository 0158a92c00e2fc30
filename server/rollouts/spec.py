"""A rollout's options as the operator gives them, checked once at the edge.

Stored with the rollout (as `Rollout.spec`), so a restart reads the same options back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

from fleetcast.server.errors import InvalidRequest
from fleetcast.server.rollouts import gates, plan

POLICIES: Final = ("pause", "abort")
MAX_SOAK_S: Final = 7 * 24 * 3600.0


@dataclass(frozen=True)
class RolloutSpec:
    """Times in seconds. 0 for `max_in_flight` or `start_rate_per_s` means no limit."""

    stages: str = "1,10%,50%,100%"
    soak_s: float = 60.0                 # each stage's soak, from the moment its devices settled
    device_timeout_s: float = 600.0      # a device not serving by then counts as failed (timed_out)
    max_in_flight: int = 0               # devices assigned but not yet settled, at most
    start_rate_per_s: float = 0.0        # devices assigned per second, at most
    gates: tuple[str, ...] = gates.DEFAULT_GATES
    min_inferences: int = 100            # per cohort and side, before a telemetry check decides
    min_devices: int = 1
    on_inconclusive: str = "pause"       # not enough data at the end of a soak: pause | abort
    on_fail: str = "abort"               # a failed check: abort | pause (its cohort is reverted either way)
    hold_back: bool = False              # a failed cohort is held back and reverted; the others go on
    evaluation_interval_s: float = 1.0   # how often the scheduler looks at a running rollout

    def checks(self) -> tuple[gates.Check, ...]:
        return gates.parse_gates(self.gates)

    def stage_sizes(self) -> list[plan.StageSize]:
        return plan.parse_stages(self.stages)

    def document(self) -> dict[str, Any]:
        return {**asdict(self), "gates": list(self.gates)}


_BOUNDS: Final = {"soak_s": (0.0, MAX_SOAK_S), "device_timeout_s": (1.0, MAX_SOAK_S),
                  "max_in_flight": (0, 1_000_000), "start_rate_per_s": (0.0, 1_000_000.0),
                  "min_inferences": (0, 10**12), "min_devices": (1, 1_000_000),
                  "evaluation_interval_s": (0.1, 3600.0)}


def spec_from(body: Mapping[str, Any]) -> RolloutSpec:
    """The options of a JSON body (unknown keys refused); raises InvalidRequest naming the key."""
    known = {f.name: f for f in fields(RolloutSpec)}
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise InvalidRequest(f"rollout option {unknown[0][:40]!r} is not known: use {', '.join(known)}")
    values: dict[str, Any] = {}
    for key, raw in body.items():
        default = getattr(RolloutSpec, key)
        if isinstance(default, bool):
            if not isinstance(raw, bool):
                raise InvalidRequest(f"rollout option {key} must be true or false")
            values[key] = raw
        elif isinstance(default, tuple):
            if not isinstance(raw, list) or not all(isinstance(x, str) and len(x) <= 200 for x in raw):
                raise InvalidRequest(f"rollout option {key} must be a list of strings such as "
                                     "[\"latency_p95 <= 1.2x control\"]")
            values[key] = tuple(raw)
        elif isinstance(default, str):
            if not isinstance(raw, str) or len(raw) > 400:
                raise InvalidRequest(f"rollout option {key} must be a string of at most 400 characters")
            values[key] = raw
        else:
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
                raise InvalidRequest(f"rollout option {key} must be a number")
            low, high = _BOUNDS[key]
            if not low <= raw <= high:
                raise InvalidRequest(f"rollout option {key} must be within [{low}, {high}], not {raw}")
            values[key] = int(raw) if isinstance(default, int) else float(raw)
    spec = RolloutSpec(**values)
    for policy in ("on_inconclusive", "on_fail"):
        if getattr(spec, policy) not in POLICIES:
            raise InvalidRequest(f"rollout option {policy} must be 'pause' or 'abort'")
    spec.checks()
    spec.stage_sizes()
    return spec
