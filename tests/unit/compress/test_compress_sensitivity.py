from __future__ import annotations

from collections.abc import Mapping

from fleetcast.server.compress.sensitivity import choose_float_layers, choose_per_layer

# Scores from a simple additive world: each quantized layer costs its own penalty.
PENALTY = {"a": 0.2, "b": 3.0, "c": 0.5, "d": 1.5}


def int8_score(keep_float: tuple[str, ...]) -> float:
    return 100.0 - sum(cost for layer, cost in PENALTY.items() if layer not in keep_float)


def test_no_layer_is_kept_in_float_when_full_int8_meets_the_floor() -> None:
    choice = choose_float_layers(int8_score, list(PENALTY), floor=90.0, progress=lambda _: None)
    assert choice.keep_float == () and choice.within_budget


def test_most_sensitive_layers_are_kept_in_float_first_until_the_floor_is_met() -> None:
    choice = choose_float_layers(int8_score, list(PENALTY), floor=99.0, progress=lambda _: None)
    assert choice.keep_float == ("b", "d")
    assert choice.within_budget and choice.score >= 99.0
    assert max(choice.sensitivity, key=choice.sensitivity.get) == "b"


def test_unreachable_floor_is_reported_as_not_within_budget() -> None:
    choice = choose_float_layers(int8_score, list(PENALTY), floor=101.0, progress=lambda _: None)
    assert not choice.within_budget and set(choice.keep_float) == set(PENALTY)
    assert choice.score == int8_score(tuple(PENALTY))


def test_unreachable_floor_keeps_the_best_scoring_set_measured_not_the_last() -> None:
    # a noisy world where every float layer beyond "b" makes the score worse
    def score(keep_float: tuple[str, ...]) -> float:
        return 97.0 + 2.0 * ("b" in keep_float) - 0.5 * len([n for n in keep_float if n != "b"])

    tried: list[tuple[str, ...]] = []
    choice = choose_float_layers(lambda kept: tried.append(kept) or score(kept), list(PENALTY), floor=100.0,
                                 progress=lambda _: None)
    assert set(tried[-1]) == set(PENALTY)                     # it did try them all
    assert choice.keep_float == ("b",) and choice.score == 99.0 and not choice.within_budget


def test_among_equal_scores_the_fewest_float_layers_are_kept() -> None:
    choice = choose_float_layers(lambda kept: 95.0, list(PENALTY), floor=99.0, progress=lambda _: None)
    assert choice.keep_float == () and not choice.within_budget


def sparsity_score(plan: Mapping[str, float]) -> float:
    # layer "x" tolerates 0.9, layer "y" only 0.5: past that each costs 10 points
    return 100.0 - 10.0 * (plan["x"] > 0.9) - 10.0 * (plan["y"] > 0.5)


def test_per_layer_choice_takes_the_most_aggressive_option_each_layer_tolerates() -> None:
    steps = (0.95, 0.9, 0.5, 0.0)
    plan = choose_per_layer(sparsity_score, {"x": steps, "y": steps}, {"x": 0.0, "y": 0.0}, floor=99.0,
                            progress=lambda _: None, step="pruning")
    assert dict(plan.options) == {"x": 0.9, "y": 0.5}
    assert plan.score >= 99.0
