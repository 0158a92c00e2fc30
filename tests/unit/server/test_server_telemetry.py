from __future__ import annotations

import pytest

from fleetcast.proto import telemetry as buckets
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.services import Services
from fleetcast.server.store import StatsRow
from fleetcast.server.telemetry import Batch


def _row(inferences: int = 10, errors: int = 0, bucket: int = 5, histogram: tuple[int, ...] | None = None) -> StatsRow:
    hist = buckets.empty()
    hist[bucket] = inferences
    return StatsRow("digits", "1", "original", inferences, errors, 1.0 * inferences, histogram or tuple(hist))


def test_a_resent_batch_is_acknowledged_as_duplicate_and_not_counted(services: Services) -> None:
    batch = Batch("b-1", "dev-1", (_row(10),))
    assert services.telemetry.ingest("dev-1", batch) is False
    assert services.telemetry.ingest("dev-1", batch) is True
    assert services.telemetry.ingest("dev-1", Batch("b-2", "dev-1", (_row(5),))) is False
    [summary] = services.telemetry.summary("dev-1")
    assert summary["inferences"] == 15


def test_percentiles_come_from_the_summed_histograms(services: Services) -> None:
    services.telemetry.ingest("dev-1", Batch("b-1", "dev-1", (_row(90, bucket=2),)))
    services.telemetry.ingest("dev-2", Batch("b-1", "dev-2", (_row(10, bucket=30),)))
    [fleet] = services.telemetry.summary()
    assert fleet["inferences"] == 100
    bounds = buckets.LATENCY_BOUNDS_MS          # interpolated inside the bucket holding the rank
    assert bounds[1] < fleet["p50_ms"] < bounds[2]
    assert bounds[29] < fleet["p99_ms"] < bounds[30]


@pytest.mark.parametrize("batch, words", [
    (Batch("b", "other-device", (_row(),)), "sent by"),
    (Batch("", "dev-1", (_row(),)), "batch_id"),
    (Batch("b", "dev-1", tuple(_row() for _ in range(257))), "at most 256"),
    (Batch("b", "dev-1", (_row(histogram=(1, 2, 3)),)), "buckets"),
    (Batch("b", "dev-1", (_row(inferences=1, errors=5),)), "not sane"),
])
def test_bad_batches_are_refused_naming_the_problem(services: Services, batch: Batch, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        services.telemetry.ingest("dev-1", batch)
    assert services.store.aggregates() == []
