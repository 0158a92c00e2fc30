"""Gates: the checks a stage must pass, evaluated per cohort on the stage's devices.

A check is written as `METRIC OP THRESHOLD`:

| metric            | op   | threshold                                | reads |
|-------------------|------|------------------------------------------|-------|
| `serving`         | `>=` | fraction of the cohort's stage devices    | devices that reported serving the new version within the per-device timeout |
| `trial_rollbacks` | `<=` | fraction of the cohort's stage devices    | devices whose agent rolled the new version back in its trial period |
| `error_rate`      | `<=` | a fraction (`0.01`) or `Kx control`       | failed / all inferences of the new version in the soak window |
| `latency_p50`, `latency_p95`, `latency_p99` | `<=` | milliseconds (`40ms`) or `Kx control` | interpolated from the merged fixed-bucket histograms |

`Kx control` compares the new version with the control group: devices of the same
cohort still on the previous version, over the same time window. Every telemetry check
needs `min_inferences` inferences from at least `min_devices` devices on each side it
reads; short of that its verdict is `no_data`, which never passes: at the end of the soak
it makes the stage inconclusive (the rollout pauses, or aborts, per `on_inconclusive`).
A ratio check in a cohort with no control devices left (the last stage) is `no_control`
and does not hold the stage; the absolute checks still apply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from fleetcast.server.errors import InvalidRequest

Verdict = Literal["pass", "fail", "no_data", "no_control"]
METRICS: Final = {"serving": ">=", "trial_rollbacks": "<=", "error_rate": "<=",
                  "latency_p50": "<=", "latency_p95": "<=", "latency_p99": "<="}
QUANTILE_OF: Final = {"latency_p50": 0.50, "latency_p95": 0.95, "latency_p99": 0.99}
DEFAULT_GATES: Final = ("serving >= 0.9", "trial_rollbacks <= 0.1", "error_rate <= 0.05",
                        "latency_p95 <= 1.5x control")
MAX_GATES: Final = 16
_GATE: Final = re.compile(r"\s*([a-z_0-9]+)\s*(<=|>=)\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(x\s*control|ms)?\s*")


@dataclass(frozen=True)
class Check:
    metric: str
    threshold: float
    relative: bool = False   # threshold is a multiple of the control group's value

    @property
    def op(self) -> str:
        return METRICS[self.metric]

    def text(self) -> str:
        unit = "x control" if self.relative else "ms" if self.metric.startswith("latency") else ""
        return f"{self.metric} {self.op} {self.threshold:g}{unit}"


def parse_gate(text: str) -> Check:
    """`latency_p95 <= 1.2x control` -> Check; raises InvalidRequest naming the problem."""
    m = _GATE.fullmatch(text)
    if m is None:
        raise InvalidRequest(f"gate {text[:80]!r} is not 'METRIC OP THRESHOLD', e.g. 'latency_p95 <= 1.2x control' "
                             f"or 'error_rate <= 0.01'")
    metric, op, raw, unit = m.group(1), m.group(2), float(m.group(3)), (m.group(4) or "").replace(" ", "")
    if metric not in METRICS:
        raise InvalidRequest(f"gate metric {metric[:40]!r} is not known: use {', '.join(METRICS)}")
    if op != METRICS[metric]:
        raise InvalidRequest(f"gate {text[:80]!r}: {metric} is checked with {METRICS[metric]}")
    relative = unit == "xcontrol"
    if relative and metric not in {"error_rate", "latency_p50", "latency_p95", "latency_p99"}:
        raise InvalidRequest(f"gate {text[:80]!r}: only error_rate and latency checks compare with the control group")
    if unit == "ms" and not metric.startswith("latency"):
        raise InvalidRequest(f"gate {text[:80]!r}: only latency checks take milliseconds")
    if metric in {"serving", "trial_rollbacks", "error_rate"} and not relative and raw > 1.0:
        raise InvalidRequest(f"gate {text[:80]!r}: {metric} is a fraction between 0 and 1")
    return Check(metric=metric, threshold=raw, relative=relative)


def parse_gates(texts: Sequence[str]) -> tuple[Check, ...]:
    if len(texts) > MAX_GATES:
        raise InvalidRequest(f"{len(texts)} gates given; at most {MAX_GATES}")
    return tuple(parse_gate(t) for t in (texts or DEFAULT_GATES))


class Figures(Protocol):
    """What a check reads of one side's windowed telemetry (fleetview.Figures)."""

    inferences: int
    errors: int
    devices: int

    @property
    def error_rate(self) -> float | None: ...

    def quantile(self, q: float) -> float | None: ...


@dataclass(frozen=True)
class Evidence:
    """One cohort of one stage: its devices' states and both sides' telemetry."""

    cohort: str
    devices: int              # the stage's devices in this cohort
    serving: int
    trial_rollbacks: int
    canary: Figures | None    # the new version on the stage's devices, in the window
    control: Figures | None   # the previous version on the cohort's other devices, same window
    control_devices: int      # devices of this cohort still on the previous version


@dataclass(frozen=True)
class Result:
    cohort: str
    check: str
    verdict: Verdict
    value: float | None
    threshold: float
    control: float | None = None
    inferences: int = 0
    devices: int = 0

    def document(self) -> dict[str, Any]:
        return {"cohort": self.cohort, "check": self.check, "verdict": self.verdict, "value": self.value,
                "threshold": self.threshold, "control": self.control, "inferences": self.inferences,
                "devices": self.devices}


def _reading(figures: Figures, metric: str) -> float | None:
    if metric == "error_rate":
        return figures.error_rate
    return figures.quantile(QUANTILE_OF[metric])


def _enough(figures: Figures | None, *, min_inferences: int, min_devices: int) -> bool:
    return figures is not None and figures.inferences >= min_inferences and figures.devices >= min_devices


def evaluate(check: Check, e: Evidence, *, min_inferences: int, min_devices: int) -> Result:
    """One check on one cohort."""
    base = {"cohort": e.cohort, "check": check.text()}
    if check.metric in {"serving", "trial_rollbacks"}:
        count = e.serving if check.metric == "serving" else e.trial_rollbacks
        if e.devices < min_devices or e.devices == 0:
            return Result(**base, verdict="no_data", value=None, threshold=check.threshold, devices=e.devices)
        value = count / e.devices
        ok = value >= check.threshold if check.metric == "serving" else value <= check.threshold
        return Result(**base, verdict="pass" if ok else "fail", value=value, threshold=check.threshold,
                      devices=e.devices)
    canary = e.canary
    inferences, devices = (canary.inferences, canary.devices) if canary else (0, 0)
    if not _enough(canary, min_inferences=min_inferences, min_devices=min_devices) or canary is None:
        return Result(**base, verdict="no_data", value=None, threshold=check.threshold, inferences=inferences,
                      devices=devices)
    value = _reading(canary, check.metric)
    if not check.relative:
        verdict: Verdict = "no_data" if value is None else "pass" if value <= check.threshold else "fail"
        return Result(**base, verdict=verdict, value=value, threshold=check.threshold, inferences=inferences,
                      devices=devices)
    if e.control_devices == 0:
        return Result(**base, verdict="no_control", value=value, threshold=check.threshold, inferences=inferences,
                      devices=devices)
    control = e.control
    if not _enough(control, min_inferences=min_inferences, min_devices=min_devices) or control is None:
        return Result(**base, verdict="no_data", value=value, threshold=check.threshold, inferences=inferences,
                      devices=devices)
    reference = _reading(control, check.metric)
    if value is None or reference is None:
        return Result(**base, verdict="no_data", value=value, threshold=check.threshold, control=reference,
                      inferences=inferences, devices=devices)
    limit = check.threshold * reference
    # An error rate against a control at zero: any error at all is a breach (the limit is 0).
    ratio = value / reference if reference > 0 else (0.0 if value == 0 else float("inf"))
    return Result(**base, verdict="pass" if value <= limit else "fail", value=ratio if reference > 0 else value,
                  threshold=check.threshold, control=reference, inferences=inferences, devices=devices)


def evaluate_all(checks: Sequence[Check], evidence: Sequence[Evidence], *, min_inferences: int,
                 min_devices: int) -> list[Result]:
    return [evaluate(c, e, min_inferences=min_inferences, min_devices=min_devices)
            for e in evidence for c in checks]


Decision = Literal["fail", "pass", "no_data", "wait"]


def decide(results: Sequence[Result], *, soak_over: bool) -> Decision:
    """A stage's decision from its results: a failure decides at once (mid-soak too); a
    pass needs the whole soak and every check passing (or without a control to compare)."""
    if any(r.verdict == "fail" for r in results):
        return "fail"
    if not soak_over:
        return "wait"
    if any(r.verdict == "no_data" for r in results):
        return "no_data"
    return "pass"


def failed_cohorts(results: Sequence[Result]) -> list[str]:
    return sorted({r.cohort for r in results if r.verdict == "fail"})


def by_cohort(results: Sequence[Result]) -> Mapping[str, list[Result]]:
    out: dict[str, list[Result]] = {}
    for r in results:
        out.setdefault(r.cohort, []).append(r)
    return out
