from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetcast.proto import telemetry as buckets
from fleetcast.server import fleetview, liveness
from fleetcast.server.store import Aggregate

CONFIG = liveness.LivenessConfig(expected_interval_s=10, offline_after_s=30)


@pytest.mark.parametrize("age, state", [(0, "online"), (10, "online"), (10.5, "late"), (30, "late"),
                                        (31, "offline")])
def test_liveness_state_follows_the_age_of_last_seen(age: float, state: str) -> None:
    assert liveness.state_of(1000.0 - age, now=1000.0, config=CONFIG) == state


def test_a_device_never_seen_is_offline() -> None:
    assert liveness.state_of(None, now=1000.0, config=CONFIG) == "offline"


def test_quantile_interpolates_inside_the_bucket_holding_the_rank() -> None:
    counts = buckets.empty()
    counts[10] = 4
    low, high = buckets.LATENCY_BOUNDS_MS[9], buckets.LATENCY_BOUNDS_MS[10]
    assert fleetview.quantile(counts, 0.25) == pytest.approx(low + (high - low) * 0.25)
    assert fleetview.quantile(counts, 1.0) == pytest.approx(high)
    assert fleetview.quantile(buckets.empty(), 0.5) is None


def test_the_open_last_bucket_reports_its_lower_bound() -> None:
    counts = buckets.empty()
    counts[-1] = 3
    assert fleetview.quantile(counts, 0.99) == buckets.LATENCY_BOUNDS_MS[-1]


@given(st.lists(st.floats(min_value=0.03, max_value=50_000.0), min_size=1, max_size=300),
       st.sampled_from([0.5, 0.95, 0.99]))
def test_quantile_lands_in_the_same_bucket_as_the_raw_samples(samples: list[float], q: float) -> None:
    counts = buckets.empty()
    for x in samples:
        counts[buckets.bucket_of(x)] += 1
    raw = float(np.quantile(samples, q, method="inverted_cdf"))  # the sample holding rank ceil(q*n)
    got = fleetview.quantile(counts, q)
    assert got is not None
    i = buckets.bucket_of(raw)
    low = buckets.LATENCY_BOUNDS_MS[i - 1] if i else 0.0
    assert low <= got <= buckets.LATENCY_BOUNDS_MS[i]


def _agg(device: str, version: str, bucket: int, n: int, errors: int = 0) -> Aggregate:
    hist = buckets.empty()
    hist[bucket] = n
    return Aggregate(device, "digits", version, "original", n, errors, 0.5 * n, hist)


def test_serving_figures_belong_only_to_the_active_version() -> None:
    aggregates = [_agg("d", "1", 30, 500, errors=9), _agg("d", "2", 5, 4, errors=1)]
    serving = fleetview.serving(aggregates, "digits@2")
    assert serving is not None
    assert (serving["version"], serving["inferences"], serving["errors"]) == ("2", 4, 1)
    assert serving["p95_ms"] <= buckets.LATENCY_BOUNDS_MS[5]
    assert fleetview.serving(aggregates, "digits@3") is None  # not yet reported: nothing, not v2's figures
