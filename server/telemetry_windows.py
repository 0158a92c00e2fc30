"""Telemetry over time: figures for a window, and series for plots.

The store keeps each device's serving per minute (`Store.window_rows`, what a rollout's
gates and a device's page read) and the fleet's per cohort per minute
(`Store.series_rows`, what the fleet's plots read over a day); the minute is the one the
server stored the batch in. Both are merged here exactly as the cumulative figures are
(`fleetview.merge`: bucket counts added, percentiles interpolated within a bucket), so a
window's p95 and the fleet's p95 mean the same thing.

Example, the p95 of each version on each hardware class over the last five minutes:

    rows = store.window_rows("digits", since=now - 300)
    hw = {d.device_id: d.hardware_class for d in store.device_profiles()}
    by = figures(rows, key=lambda r: (r.version, hw.get(r.device_id, "")))
    by[("2", "rk3399")].quantile(0.95)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from fleetcast.server.fleetview import INTERPOLATION, QUANTILES, Counted, Figures, merge
from fleetcast.server.store import WINDOW_S

R = TypeVar("R", bound=Counted)

# The windows a person picks on the dashboard, and the step of their plots.
WINDOWS: Final[Mapping[str, tuple[float, float]]] = {
    "5m": (300.0, WINDOW_S),
    "1h": (3600.0, WINDOW_S),
    "1d": (86400.0, 15 * WINDOW_S),
}


def figures(rows: Iterable[R], *, key: Callable[[R], Any]) -> dict[Any, Figures]:
    """Rows of one window summed by `key(row)`."""
    return merge(rows, key)


@dataclass(frozen=True)
class Point:
    """One step of a series: its start (unix seconds) and the figures within it."""

    at: float
    figures: Figures


def series(rows: Iterable[R], *, step_s: float, key: Callable[[R], Any]) -> dict[Any, list[Point]]:
    """Per key, the figures of each step of `step_s` seconds (a multiple of the one-minute
    window) that has data, oldest first. Rows need a `minute` attribute."""
    if step_s < WINDOW_S or step_s % WINDOW_S:
        raise ValueError(f"a series step must be a multiple of {WINDOW_S} s, got {step_s}")
    per_step = int(step_s // WINDOW_S)
    merged = merge(rows, lambda r: (key(r), r.minute // per_step))  # type: ignore[attr-defined]
    out: dict[Any, list[Point]] = {}
    for (k, step), f in sorted(merged.items(), key=lambda item: item[0][1]):
        out.setdefault(k, []).append(Point(at=float(step * per_step * WINDOW_S), figures=f))
    return out


def series_document(points: Iterable[Point]) -> dict[str, Any]:
    """A series as JSON columns, ready for a plot: times and p50/p95/p99 (null when empty)."""
    points = list(points)
    doc: dict[str, Any] = {"at": [p.at for p in points],
                           "inferences": [p.figures.inferences for p in points],
                           "errors": [p.figures.errors for p in points]}
    for name, q in QUANTILES:
        doc[name] = [p.figures.quantile(q) for p in points]
    doc["percentiles"] = INTERPOLATION
    return doc
