"""What the fleet looks like, read from the store: device documents and merged latency figures.

Every latency figure is read from histograms with the fixed buckets of
`fleetcast.proto.telemetry`, merged by adding bucket counts (never by averaging
percentiles). A percentile is interpolated linearly inside the bucket that holds its
rank, as Prometheus' `histogram_quantile` does: bucket i covers (bound[i-1], bound[i]]
with bound[-1] = 0; a rank in the open last bucket reports the last finite bound (a
lower bound on the true value).

A device's figures always name one model version: `telemetry` has one row per
(model, version, variant) and `serving` is the active version's own figures, summed
over its variants, or null when that version has not reported yet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

import numpy as np

from fleetcast.proto import telemetry as buckets
from fleetcast.server.store import Aggregate, Device

INTERPOLATION: Final = ("linear within the fixed latency buckets of fleetcast.proto.telemetry "
                        "(as Prometheus histogram_quantile); the open last bucket reports its lower bound")
QUANTILES: Final = (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99))
C = TypeVar("C", bound="Counted")


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of a bucketed histogram, interpolated; None when empty."""
    if len(counts) != buckets.BUCKETS:
        raise ValueError(f"histogram has {len(counts)} buckets, expected {buckets.BUCKETS}")
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            if i == len(buckets.LATENCY_BOUNDS_MS):
                return buckets.LATENCY_BOUNDS_MS[-1]
            lower = buckets.LATENCY_BOUNDS_MS[i - 1] if i else 0.0
            upper = buckets.LATENCY_BOUNDS_MS[i]
            return lower + (upper - lower) * max(rank - seen, 0.0) / c
        seen += c
    return buckets.LATENCY_BOUNDS_MS[-1]


class Counted(Protocol):
    """A telemetry row of any table: cumulative aggregates, per-device or per-cohort windows."""

    inferences: int
    errors: int
    latency_sum_ms: float
    histogram: Sequence[int]


@dataclass(frozen=True)
class Figures:
    """Counts and a histogram for one key (any grouping), merged from telemetry rows;
    `devices` counts the distinct devices behind them (0 for rows without a device)."""

    inferences: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    histogram: tuple[int, ...] = tuple(buckets.empty())
    devices: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.inferences if self.inferences else None

    def quantile(self, q: float) -> float | None:
        return quantile(self.histogram, q)

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "inferences": self.inferences, "errors": self.errors,
            "mean_ms": self.latency_sum_ms / self.inferences if self.inferences else None,
        }
        out.update({name: quantile(self.histogram, q) for name, q in QUANTILES})
        return out


def merge(rows: Iterable[C], key: Callable[[C], Any]) -> dict[Any, Figures]:
    """Sums rows by `key(row)` (bucket counts added element-wise, exactly: int64)."""
    groups: dict[Any, list[C]] = {}
    for a in rows:
        groups.setdefault(key(a), []).append(a)
    out: dict[Any, Figures] = {}
    for k, items in groups.items():
        histograms = np.asarray([a.histogram for a in items], dtype=np.int64).reshape(len(items), buckets.BUCKETS)
        out[k] = Figures(inferences=sum(a.inferences for a in items), errors=sum(a.errors for a in items),
                         latency_sum_ms=math.fsum(a.latency_sum_ms for a in items),
                         histogram=tuple(int(x) for x in histograms.sum(axis=0)),
                         devices=len({d for a in items if (d := getattr(a, "device_id", ""))}))
    return out


def telemetry_rows(aggregates: Sequence[Aggregate]) -> list[dict[str, Any]]:
    """One row per (model, version, variant), each with that version's own figures."""
    merged = merge(aggregates, lambda a: (a.model, a.version, a.variant))
    return [{"model": m, "version": v, "variant": x, **s.figures()} for (m, v, x), s in sorted(merged.items())]


def serving(aggregates: Sequence[Aggregate], active_model: str) -> dict[str, Any] | None:
    """The active `model@version`'s figures (all its variants), None when it has none yet."""
    model, sep, version = active_model.partition("@")
    if not model or not sep:
        return None
    mine = [a for a in aggregates if a.model == model and a.version == version]
    if not mine:
        return None
    series = merge(mine, lambda a: None)[None]
    return {"model": model, "version": version, "variants": sorted({a.variant for a in mine}), **series.figures()}


def hardware_of(devices: Iterable[Device]) -> Mapping[str, str]:
    return {d.device_id: d.hardware_class for d in devices}
