"""What the report advises: a level per hardware class, and plain words on slow levels.

A level is recommended for a hardware class only on figures measured on that class:
the fastest built level (median latency at one thread, as a ratio to the original
timed in the same run) whose quality drop is within the budget and which is not slower
than the original. The figures in one report come from the machine that ran it, so
only that machine's class gets a measured recommendation; every other class is listed
with the variant the server would send it (`levels.PREFERENCE`) and marked unmeasured,
with how to measure it (run `fleetcast compress` on such a device).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from typing import Protocol

from fleetcast.server.compress.levels import PREFERENCE, choose_variant

SLOWER_THAN_ORIGINAL = 1.05   # timing noise on a shared machine is a few %: within 5 % counts as no slower


class Measured(Protocol):
    level: str
    error: str | None
    latency_ratio: float | None
    latency_ratio_2t: float | None
    drop_pp: float | None


def machine_class(machine: str | None = None) -> str:
    """The hardware class of the machine measuring: x86-cpu or arm-cpu."""
    name = (machine or platform.machine()).lower()
    return "arm-cpu" if name in {"aarch64", "arm64", "armv7l", "armv8l"} else "x86-cpu"


def within(result: Measured, budget_pp: float) -> bool:
    return result.drop_pp is not None and result.drop_pp <= budget_pp + 1e-9


def recommend(levels: Sequence[Measured], budget_pp: float, *, measured_class: str) -> dict[str, dict[str, object]]:
    """hardware class -> {"level", "measured", "why"}; see the module docstring."""
    built = [r for r in levels if r.error is None and r.latency_ratio is not None]
    candidates = [r for r in built if within(r, budget_pp) and r.latency_ratio <= SLOWER_THAN_ORIGINAL]
    advice: dict[str, dict[str, object]] = {}
    if candidates:
        best = min(candidates, key=lambda r: r.latency_ratio)
        advice[measured_class] = {"level": best.level, "measured": True, "latency_ratio": round(best.latency_ratio, 4),
                                  "why": f"fastest level within the {budget_pp}-point budget here: "
                                         f"{best.latency_ratio:.2f}x the original's latency"}
    else:
        advice[measured_class] = {"level": "original", "measured": True, "latency_ratio": 1.0,
                                  "why": "no built level is both within budget and faster than the original here"}
    names = {r.level for r in built}
    for hardware in PREFERENCE:
        if hardware not in advice:
            advice[hardware] = {"level": choose_variant(hardware, names), "measured": False,
                                "why": "not measured on this class: the server's default order for it; run "
                                       "fleetcast compress on such a device for measured advice"}
    return advice


def slower_notes(levels: Sequence[Measured]) -> list[str]:
    """One plain sentence per level that runs slower than the original here."""
    notes = []
    for result in levels:
        if result.error is not None or result.latency_ratio is None:
            continue
        ratios = {"1 thread": result.latency_ratio, "2 threads": result.latency_ratio_2t}
        slow = {k: v for k, v in ratios.items() if v is not None and v > SLOWER_THAN_ORIGINAL}
        if slow:
            said = " and ".join(f"{v:.2f}x at {k}" for k, v in slow.items())
            notes.append(f"{result.level} is slower than the original on this machine ({said} the original's "
                         "latency): use it for its size, not its speed")
    return notes


def describe(advice: Mapping[str, Mapping[str, object]]) -> list[str]:
    return [f"{hardware}: {entry['level']}" + ("" if entry["measured"] else " (not measured)")
            + f" - {entry['why']}" for hardware, entry in advice.items()]
