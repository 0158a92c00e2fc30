"""Cohorts: groups of simulated devices that share a profile and a behaviour.

A cohort is written on the command line as comma-separated `key=value` pairs, e.g.
`name=cpu,devices=500,hardware=x86-cpu,latency_ms=8,sigma=0.3,error_rate=0.01`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields
from typing import Final

from fleetcast.proto.topics import DEVICE_ID_PATTERN


class CohortError(ValueError):
    """A cohort description that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Cohort:
    """One group of devices. Times in milliseconds, rates as fractions in [0, 1]."""

    name: str = "sim"
    devices: int = 10
    hardware: str = "x86-cpu"
    backends: str = "onnxruntime"     # '+'-separated on the command line
    group: str = ""
    latency_ms: float = 10.0          # median inference latency (log-normal)
    sigma: float = 0.25               # log-normal shape of the inference latency
    error_rate: float = 0.0           # fraction of inferences that fail
    fail_rate: float = 0.0            # fraction of installs reported as failed (smoke test)
    delay_ms: float = 0.0             # mean network delay before each call (exponential)
    call_error_rate: float = 0.0      # fraction of calls that fail once and are retried
    slow_version: str = ""            # a version this cohort serves worse (a rollout's bad release) ...
    slow_factor: float = 1.0          # ... its latency multiplied by this
    slow_error_rate: float = 0.0      # ... and this fraction of its inferences failing on top

    def __post_init__(self) -> None:
        if not DEVICE_ID_PATTERN.fullmatch(self.name) or len(self.name) > 40:
            raise CohortError(f"cohort name {self.name[:40]!r}: use up to 40 letters, digits, '.', '_' or '-'")
        if not 0 < self.devices <= 100_000:
            raise CohortError(f"cohort {self.name}: devices must be 1-100000, not {self.devices}")
        for rate in ("error_rate", "fail_rate", "call_error_rate", "slow_error_rate"):
            if not 0.0 <= getattr(self, rate) <= 1.0:
                raise CohortError(f"cohort {self.name}: {rate} must be within [0, 1]")
        for value in ("latency_ms", "sigma", "delay_ms", "slow_factor"):
            if not 0.0 <= getattr(self, value) < math.inf:
                raise CohortError(f"cohort {self.name}: {value} must be a finite number >= 0")

    def device_ids(self, prefix: str) -> list[str]:
        return [f"{prefix}{self.name}-{i:05d}" for i in range(self.devices)]

    def backend_names(self) -> tuple[str, ...]:
        return tuple(b for b in self.backends.split("+") if b)

    def latency(self, rng: random.Random, version: str = "") -> float:
        factor = self.slow_factor if version and version == self.slow_version else 1.0
        return factor * self.latency_ms * math.exp(rng.gauss(0.0, self.sigma)) if self.latency_ms else 0.0

    def errors_on(self, version: str) -> float:
        """The fraction of inferences that fail while serving `version`."""
        extra = self.slow_error_rate if version and version == self.slow_version else 0.0
        return min(1.0, self.error_rate + extra)

    def delay_s(self, rng: random.Random) -> float:
        return rng.expovariate(1000.0 / self.delay_ms) if self.delay_ms else 0.0


_TYPES: Final = {f.name: f.type for f in fields(Cohort)}


def parse_cohort(text: str) -> Cohort:
    """`name=cpu,devices=500,latency_ms=8` -> Cohort; raises CohortError naming the field."""
    values: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, raw = part.partition("=")
        if not eq or key not in _TYPES:
            raise CohortError(f"cohort field {key[:40]!r} is not known: use {', '.join(_TYPES)}")
        kind = _TYPES[key]
        try:
            values[key] = int(raw) if kind == "int" else float(raw) if kind == "float" else raw
        except ValueError as e:
            raise CohortError(f"cohort field {key}={raw[:40]!r} is not a {kind}") from e
    return Cohort(**values)  # type: ignore[arg-type]
