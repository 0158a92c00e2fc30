from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetcast.server.errors import InvalidRequest
from fleetcast.server.rollouts.plan import Planned, parse_stages, plan_stages, summary


def _fleet(sizes: dict[str, int]) -> list[Planned]:
    return [Planned(f"{c}-{i:04d}", c) for c, n in sizes.items() for i in range(n)]


def test_a_one_device_canary_still_reaches_every_cohort() -> None:
    fleet = _fleet({"x86/ort/original": 80, "rk3399/ort/int8": 15, "jetson/ort/fp16": 5})
    stages = plan_stages("ro-1", fleet, parse_stages("1,10%,50%,100%"))
    counts = summary(stages)
    assert counts[0] == {"jetson/ort/fp16": 1, "rk3399/ort/int8": 1, "x86/ort/original": 1}
    assert sum(counts[1].values()) + 3 >= 10
    assert sorted(d.device_id for s in stages for d in s) == sorted(d.device_id for d in fleet)


@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 60), min_size=1),
       st.lists(st.one_of(st.integers(1, 50).map(str), st.integers(1, 100).map(lambda p: f"{p}%")), min_size=1,
                max_size=6))
def test_every_device_is_in_exactly_one_stage_and_stages_only_grow(sizes: dict[str, int], text: list[str]) -> None:
    fleet = _fleet(sizes)
    stages = plan_stages("ro-x", fleet, parse_stages(",".join(text)))
    ids = [d.device_id for s in stages for d in s]
    assert sorted(ids) == sorted(d.device_id for d in fleet)
    assert {d.cohort for d in stages[0]} == set(sizes)     # each cohort from the first stage on
    assert plan_stages("ro-x", fleet, parse_stages(",".join(text))) == stages   # the same plan twice


@pytest.mark.parametrize("text", ["", "0", "10%,0%", "101%", "x", "1," * 30])
def test_stage_lists_that_mean_nothing_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequest, match="stage"):
        parse_stages(text)
