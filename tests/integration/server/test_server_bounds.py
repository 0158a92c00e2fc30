"""A real server refuses what it cannot store exactly, and answers bad bodies with 400:
telemetry sums of 2^53 or 1e308 get INVALID_ARGUMENT naming the batch (never UNKNOWN), the REST
API never emits Infinity, and a 50,000-deep JSON body is a 400, not a 500."""

from __future__ import annotations

import json

import grpc
import pytest

from fleetcast.proto import telemetry as buckets
from fleetcast.proto.v1 import device_pb2 as pb
from tests.integration.server.conftest import RunningServer, auth


def _batch(batch_id: str, device_id: str, *, inferences: int, latency_sum_ms: float) -> pb.TelemetryBatch:
    counts = buckets.empty()
    counts[4] = inferences
    return pb.TelemetryBatch(batch_id=batch_id, device_id=device_id, stats=[pb.ModelStats(
        model="bounds", version="1", variant="original", backend="onnxruntime", inferences=inferences,
        latency=pb.LatencyHistogram(counts=counts), latency_sum_ms=latency_sum_ms)])


def _strict(data: bytes) -> object:
    return json.loads(data, parse_constant=lambda name: pytest.fail(f"the REST API emitted {name}"))


@pytest.mark.parametrize("inferences, latency_sum_ms, words", [
    (2**53, 1.0, "at most 4294967296"),
    (10, 1e308, "ms per inference"),
])
def test_telemetry_sums_that_cannot_stay_exact_are_refused_as_invalid_argument(
    server: RunningServer, inferences: int, latency_sum_ms: float, words: str
) -> None:
    device = f"bounds-{inferences}"
    token = server.enroll(device)
    batches = [_batch(f"b{i}", device, inferences=inferences, latency_sum_ms=latency_sum_ms) for i in range(2)]
    with pytest.raises(grpc.RpcError) as refused:
        list(server.stub().StreamTelemetry(iter(batches), metadata=auth(token), timeout=10))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert words in refused.value.details() and "b0" in refused.value.details()
    status, _, body = server.request("GET", f"/v1/devices/{device}")
    assert status == 200
    assert _strict(body)["telemetry"] == []   # type: ignore[index]
    status, _, body = server.request("GET", "/v1/devices")
    assert status == 200
    _strict(body)


def test_a_50k_deep_json_body_is_a_400_naming_the_depth(server: RunningServer) -> None:
    body = b"[" * 50_000 + b"]" * 50_000
    status, _, data = server.request("POST", "/v1/deployments", body=body,
                                     headers={"Content-Type": "application/json"})
    assert status == 400, data[:300]
    error = json.loads(data)["error"]
    assert error["code"] == "invalid_request" and "nested 50000 levels" in error["message"]
