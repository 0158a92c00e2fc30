"""The collector settings a server with thousands of streams runs with."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from fleetcast.server import collector
from fleetcast.server.collector import CollectorConfig


@pytest.fixture
def restored_collector() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_sets_the_thresholds_and_freezes_what_start_up_built(restored_collector: None) -> None:
    gc.unfreeze()
    startup = [object() for _ in range(10)], {"built": "at start-up"}
    collector.tune(CollectorConfig(young_threshold=12_345, middle_threshold=7, old_threshold=9))
    assert gc.get_threshold() == (12_345, 7, 9)
    assert gc.get_freeze_count() > 0
    assert not any(o is startup for o in gc.get_objects())   # frozen: no collection scans it


def test_tune_by_default_runs_young_collections_far_less_often_than_cpython(restored_collector: None) -> None:
    collector.tune()
    assert gc.get_threshold()[0] >= 50 * 700


@pytest.mark.parametrize("bad", [dict(young_threshold=0), dict(middle_threshold=0), dict(old_threshold=0),
                                 dict(young_threshold=10**9)])
def test_config_refuses_thresholds_that_would_stop_or_break_collection(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="thresholds"):
        CollectorConfig(**bad)
