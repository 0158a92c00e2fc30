"""Telemetry batches as the server parses them from gRPC or MQTT bytes."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from fleetcast.proto.v1 import device_pb2
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.telemetry import Batch, check_batch


def test_one_input(data: bytes) -> None:
    try:
        batch = Batch.from_message(device_pb2.TelemetryBatch.FromString(data))
        check_batch(batch, "dev-fuzz")
    except (DecodeError, InvalidRequest):
        return
