from __future__ import annotations

import pytest

from fleetcast.server.compress.levels import ALL_LEVELS, PREFERENCE, choose_variant, parse_levels

HARDWARE_CLASSES = ("x86-cpu", "arm-cpu", "rk3399", "jetson", "movidius", "phone-android", "phone-ios")


def test_every_hardware_class_has_an_order_ending_in_the_original() -> None:
    assert set(PREFERENCE) == set(HARDWARE_CLASSES)
    for order in PREFERENCE.values():
        assert order[-1] == "original"
        assert set(order[:-1]) <= set(ALL_LEVELS)
        assert len(set(order)) == len(order)


def test_choose_variant_takes_the_first_preferred_variant_that_was_built() -> None:
    order = PREFERENCE["jetson"]
    assert choose_variant("jetson", {order[1], order[2]}) == order[1]
    assert choose_variant("jetson", set()) == "original"


def test_unknown_hardware_class_falls_back_to_the_cpu_order() -> None:
    assert choose_variant("toaster", {"balanced", "fp16"}) == choose_variant("x86-cpu", {"balanced", "fp16"})


def test_parse_levels_keeps_order_and_drops_repeats() -> None:
    assert parse_levels("smallest, fp16,smallest") == ("smallest", "fp16")


@pytest.mark.parametrize("text", ["turbo", "", "fp16,fp8"])
def test_parse_levels_names_the_unknown_level(text: str) -> None:
    with pytest.raises(ValueError, match="choose from"):
        parse_levels(text)
