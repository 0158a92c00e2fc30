"""Telemetry sums stay finite and exact: oversized batches are refused by name, aggregates saturate."""

from __future__ import annotations

import json
import math

import pytest

from fleetcast.proto import telemetry as buckets
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.services import Services
from fleetcast.server.store import MAX_AGGREGATE_LATENCY_MS, StatsRow
from fleetcast.server.telemetry import MAX_BATCH_COUNT, MAX_LATENCY_MS, Batch


def _row(inferences: int, latency_sum_ms: float) -> StatsRow:
    hist = buckets.empty()
    hist[3] = inferences
    return StatsRow("digits", "1", "original", inferences, 0, latency_sum_ms, tuple(hist))


def _strict_json(doc: object) -> object:
    return json.loads(json.dumps(doc), parse_constant=lambda name: pytest.fail(f"{name} in JSON output"))


@pytest.mark.parametrize("row, words", [
    (_row(2**53, 1.0), "at most 4294967296"),
    (_row(10, 1e308), r"at most 3\.6e\+06 ms per inference"),
    (_row(10, math.inf), "must be finite"),
    (_row(10, math.nan), "must be finite"),
])
def test_batches_whose_sums_cannot_be_stored_exactly_are_refused_naming_the_field(
    services: Services, row: StatsRow, words: str
) -> None:
    with pytest.raises(InvalidRequest, match=words) as refused:
        services.telemetry.ingest("dev-1", Batch("b-huge", "dev-1", (row,)))
    assert "b-huge" in refused.value.message
    assert services.store.aggregates() == []


def test_latency_sums_saturate_instead_of_becoming_infinite(services: Services) -> None:
    biggest = _row(MAX_BATCH_COUNT, MAX_BATCH_COUNT * MAX_LATENCY_MS)
    for device in ("dev-1", "dev-2"):
        for i in range(3):
            services.telemetry.ingest(device, Batch(f"b-{i}", device, (biggest,)))
    for summary, devices in ((services.telemetry.summary("dev-1"), 1), (services.telemetry.summary(), 2)):
        [entry] = _strict_json(summary)  # type: ignore[misc]
        assert entry["inferences"] == 3 * MAX_BATCH_COUNT * devices
        assert math.isfinite(entry["mean_ms"])
    [a] = services.store.aggregates(device_id="dev-1")
    assert a.latency_sum_ms == MAX_AGGREGATE_LATENCY_MS
