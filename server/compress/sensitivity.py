"""Per-layer sensitivity searches: which layers to keep in float (balanced), and how
hard each layer can be pruned and shared (smallest), within an accuracy budget.

Both are greedy searches over a score function that builds and measures a whole
model, so interactions between layers are measured, not assumed away.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Option = TypeVar("Option")


@dataclass(frozen=True)
class FloatLayerChoice:
    keep_float: tuple[str, ...]
    score: float
    within_budget: bool
    sensitivity: Mapping[str, float]  # layer -> score gained by keeping only it in float
    timed_out: bool = False           # the time limit stopped the search: the best set measured was kept


def never() -> bool:
    return False


def choose_float_layers(score_of: Callable[[tuple[str, ...]], float], layers: Sequence[str], floor: float,
                        progress: Callable[[str], None], *, stop: Callable[[], bool] = never) -> FloatLayerChoice:
    """Fewest layers to keep in float so that score_of(kept) >= floor.

    Measures each layer's sensitivity (the score with only that layer in float), then
    keeps layers in float most sensitive first until the floor is met. When no set it
    measures meets the floor, the best-scoring one is kept (the fewest layers among
    equals) and reported as not within budget: more float layers cost latency, and
    they are worth it only where they buy accuracy. When `stop()` turns true (the time
    limit), the search ends there and keeps the best set measured so far, the same way.
    """
    measured: dict[tuple[str, ...], float] = {}

    def measure(keep_float: tuple[str, ...]) -> float:
        measured[keep_float] = score_of(keep_float)
        return measured[keep_float]

    score = measure(())
    if score >= floor:
        return FloatLayerChoice((), score, True, {})
    sensitivity: dict[str, float] = {}
    timed_out = False
    for index, layer in enumerate(layers, 1):
        if stop():
            timed_out = True
            break
        progress(f"sensitivity {index}/{len(layers)} layer {layer}")
        sensitivity[layer] = measure((layer,)) - score
    kept: list[str] = []
    for layer in sorted(sensitivity, key=lambda name: -sensitivity[name]):
        if timed_out or stop():
            timed_out = True
            break
        kept.append(layer)
        progress(f"keeping {len(kept)} layer(s) in float, latest {layer}")
        score = measure(tuple(kept))
        logger.info("float layers=%d latest=%s score=%.3f floor=%.3f", len(kept), layer, score, floor)
        if score >= floor:
            return FloatLayerChoice(tuple(kept), score, True, sensitivity)
    best = max(measured, key=lambda keep_float: (measured[keep_float], -len(keep_float)))
    logger.info("no float layer set met floor=%.3f; keeping the best scoring: %d layer(s), score=%.3f",
                floor, len(best), measured[best])
    return FloatLayerChoice(best, measured[best], measured[best] >= floor, sensitivity, timed_out)


@dataclass(frozen=True)
class LayerPlan(Generic[Option]):
    options: Mapping[str, Option]   # layer -> chosen option
    score: float
    timed_out: bool = False         # the time limit stopped the search; later layers kept their safe option


def choose_per_layer(score_of: Callable[[Mapping[str, Option]], float],
                     candidates: Mapping[str, Sequence[Option]], start: Mapping[str, Option],
                     floor: float, progress: Callable[[str], None], *, step: str,
                     stop: Callable[[], bool] = never) -> LayerPlan[Option]:
    """For each layer in turn, the most aggressive option that keeps the whole model at
    or above `floor`, given the choices already made. Candidates are ordered most
    aggressive first and end with the layer's safe option in `start`; the score is
    taken to fall as options get more aggressive, so each layer is a bisection. When
    `stop()` turns true the search ends: the layers not yet decided keep `start`."""
    chosen = dict(start)
    score: float | None = None
    timed_out = False
    for index, (layer, options) in enumerate(candidates.items(), 1):
        low, high = 0, list(options).index(start[layer])   # options[high] is known to be acceptable
        high_score = None
        while low < high:
            if stop():
                timed_out = True
                break
            middle = (low + high) // 2
            progress(f"{step} {index}/{len(candidates)} layer {layer}: trying {options[middle]}")
            trial_score = score_of({**chosen, layer: options[middle]})
            if trial_score >= floor:
                high, high_score = middle, trial_score
            else:
                low = middle + 1
        if high_score is not None:
            chosen[layer], score = options[high], high_score
            logger.info("%s layer=%s option=%s score=%.3f", step, layer, options[high], high_score)
        if timed_out:
            break
    return LayerPlan(chosen, score if score is not None else score_of(chosen), timed_out)
