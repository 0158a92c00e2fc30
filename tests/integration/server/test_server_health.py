"""Health and readiness of a real `fleetcast server`: HTTP /healthz and /readyz, gRPC health and reflection."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fleetcast.proto.v1 import device_pb2 as pb
from fleetcast.proto.v1 import device_pb2_grpc as pb_grpc
from tests.integration.server.conftest import RunningServer, auth, launch
from tests.support.waiting import wait_for

DEVICE_SERVICE = "fleetcast.v1.DeviceService"


def test_healthz_and_readyz_answer_without_a_token(server: RunningServer) -> None:
    status, doc = server.json("GET", "/healthz", token=None)
    assert (status, doc) == (200, {"status": "alive"})
    status, doc = server.json("GET", "/readyz", token=None)
    assert status == 200, doc
    assert doc["status"] == "ready" and doc["failing"] == []
    assert set(doc["checks"]) == {"store", "blobs", "signer"}
    assert all(check["ok"] for check in doc["checks"].values())


def _readyz(running: RunningServer) -> tuple[int, dict]:
    status, doc = running.json("GET", "/readyz", token=None)
    return status, doc


def _break_and_restore(path: Path, running: RunningServer) -> tuple[int, dict]:
    aside = path.with_name(path.name + ".aside")
    path.rename(aside)
    try:
        return _readyz(running)
    finally:
        aside.rename(path)


def test_readyz_is_503_and_names_the_failing_part(tmp_path: Path) -> None:
    with launch(tmp_path) as running:
        status, doc = _break_and_restore(running.data / "blobs" / "tmp", running)
        assert status == 503 and doc["status"] == "not_ready" and doc["failing"] == ["blobs"]
        assert "blobs" in doc["checks"]["blobs"]["detail"] and doc["checks"]["store"]["ok"]

        status, doc = _break_and_restore(running.data / "keys" / "image-online.pem", running)
        assert status == 503 and doc["failing"] == ["signer"]
        assert "image-online.pem" in doc["checks"]["signer"]["detail"]

        assert _readyz(running)[0] == 200  # restored: ready again, nothing was lost


def test_grpc_health_says_serving_for_the_server_and_the_device_service(server: RunningServer) -> None:
    with server.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", DEVICE_SERVICE):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_reflection_lists_and_describes_the_device_service(server: RunningServer) -> None:
    with server.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol=DEVICE_SERVICE)]
        listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {DEVICE_SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert described.file_descriptor_response.file_descriptor_proto, "no descriptor for DeviceService"
    assert b"WatchAssignments" in b"".join(described.file_descriptor_response.file_descriptor_proto)


def test_the_openapi_document_lists_the_monitoring_routes(server: RunningServer) -> None:
    status, doc = server.json("GET", "/v1/openapi.json", token=None)
    assert status == 200
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/metrics"]["get"]["security"] == [{"metricsToken": []}]
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    json.dumps(doc)  # stays serializable


def _liveness(running: RunningServer, device_id: str) -> dict:
    status, doc = running.json("GET", f"/v1/devices/{device_id}")
    assert status == 200, doc
    return doc["liveness"]


def test_an_open_watch_stream_alone_keeps_a_device_online(tmp_path: Path) -> None:
    with launch(tmp_path, "--device-interval-s", "1.5", "--device-offline-after-s", "4") as running:
        token = running.enroll("watcher-1")
        channel = running.channel()
        stream = pb_grpc.DeviceServiceStub(channel).WatchAssignments(
            pb.WatchRequest(device_id="watcher-1"), metadata=auth(token))
        next(stream)  # the current notice: the stream is open
        time.sleep(4.5)  # past offline_after: nothing but the open stream was sent
        live = _liveness(running, "watcher-1")
        assert live["state"] == "online" and live["expected_interval_s"] == 1.5 and live["offline_after_s"] == 4
        stream.cancel()
        channel.close()
        wait_for(lambda: _liveness(running, "watcher-1")["state"] == "late", timeout_s=10, what="late")
        wait_for(lambda: _liveness(running, "watcher-1")["state"] == "offline", timeout_s=10, what="offline")
