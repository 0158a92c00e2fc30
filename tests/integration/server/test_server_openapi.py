"""The OpenAPI document describes every JSON body the real server sends, member by member."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from fleetcast.proto import telemetry as buckets
from fleetcast.proto.v1 import device_pb2 as pb
from fleetcast.server.api.routes import ROUTES
from tests.integration.server.conftest import RunningServer, auth
from tests.support import models


@pytest.fixture(scope="module")
def bodies(server: RunningServer) -> dict[str, tuple[int, Any]]:
    """One real response per JSON route, keyed by operation id."""
    out: dict[str, tuple[int, Any]] = {}
    token = server.enroll("openapi-1", group="openapi")
    counts = buckets.empty()
    counts[7] = 5
    list(server.stub().StreamTelemetry(iter([pb.TelemetryBatch(batch_id="o1", device_id="openapi-1", stats=[
        pb.ModelStats(model="openapi-model", version="1", variant="original", inferences=5, errors=1,
                      latency=pb.LatencyHistogram(counts=counts), latency_sum_ms=0.4)])]),
        metadata=auth(token), timeout=10))
    out["upload_model"] = server.upload("openapi-model", {"model": models.to_bytes(models.tiny_classifier(seed=9))})
    out["openapi"] = server.json("GET", "/v1/openapi.json", token=None)
    out["healthz"] = server.json("GET", "/healthz", token=None)
    out["readyz"] = server.json("GET", "/readyz", token=None)
    out["list_models"] = server.json("GET", "/v1/models")
    out["get_model"] = server.json("GET", "/v1/models/openapi-model")
    out["get_version"] = server.json("GET", "/v1/models/openapi-model/versions/1")
    out["create_deployment"] = server.json("POST", "/v1/deployments", {"model": "openapi-model",
                                                                       "target": "group:openapi"})
    server.stub().ReportStatus(pb.StatusReport(deployment_id=out["create_deployment"][1]["id"], state="download",
                                               event="success", active_model="openapi-model@1"),
                               metadata=auth(token), timeout=10)
    out["list_devices"] = server.json("GET", "/v1/devices")
    out["get_device"] = server.json("GET", "/v1/devices/openapi-1")
    out["list_deployments"] = server.json("GET", "/v1/deployments")
    out["get_deployment"] = server.json("GET", f"/v1/deployments/{out['create_deployment'][1]['id']}")
    out["list_deployment_devices"] = server.json(
        "GET", f"/v1/deployments/{out['create_deployment'][1]['id']}/devices?limit=5")
    out["cancel_deployment"] = server.json("POST", f"/v1/deployments/{out['create_deployment'][1]['id']}/cancel")
    again = server.json("POST", "/v1/deployments", {"model": "openapi-model", "target": "group:openapi"})[1]["id"]
    out["undo_deployment"] = server.json("POST", f"/v1/deployments/{again}/undo")
    request = {"model": "openapi-model", "target": "group:openapi", "stages": "1,100%", "soak_s": 60}
    out["plan_rollout"] = server.json("POST", "/v1/rollout-plans", request)
    out["create_rollout"] = server.json("POST", "/v1/rollouts", request)
    rollout = out["create_rollout"][1]["id"]
    for verb in ("pause", "resume", "abort", "undo"):
        out[f"{verb}_rollout"] = server.json("POST", f"/v1/rollouts/{rollout}/{verb}")
    second = server.json("POST", "/v1/rollouts", request)[1]["id"]
    out["promote_rollout"] = server.json("POST", f"/v1/rollouts/{second}/promote?full=1")
    out["get_rollout"] = server.json("GET", f"/v1/rollouts/{second}")
    out["list_rollouts"] = server.json("GET", "/v1/rollouts")
    out["put_pin"] = server.json("PUT", "/v1/models/openapi-model/pins/hardware:x86-cpu", {"variant": "original"})
    out["list_pins"] = server.json("GET", "/v1/models/openapi-model/pins")
    out["delete_pin"] = server.json("DELETE", "/v1/models/openapi-model/pins/hardware:x86-cpu")
    out["create_enroll_token"] = server.json("POST", "/v1/enroll-tokens", {"group": "openapi", "uses": 1})
    out["list_enroll_tokens"] = server.json("GET", "/v1/enroll-tokens")
    out["reprovision_device"] = server.json("POST", "/v1/devices/openapi-1/reprovision")
    return out


def _success_schema(doc: dict[str, Any], operation_id: str) -> dict[str, Any]:
    for ops in doc["paths"].values():
        for op in ops.values():
            if op["operationId"] == operation_id:
                ok = op["responses"].get("201") or op["responses"]["200"]
                return ok["content"]["application/json"]["schema"]
    raise AssertionError(f"{operation_id} is not in the document")


def _undocumented(instance: Any, schema: dict[str, Any], root: dict[str, Any], where: str) -> list[str]:
    """Members the instance has that its schema does not describe (following $ref, items, oneOf)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _undocumented(instance, root["components"]["schemas"][name], root, where)
    if "oneOf" in schema:
        for branch in schema["oneOf"]:
            if Draft202012Validator({**branch, "components": root["components"]}).is_valid(instance):
                return _undocumented(instance, branch, root, where)
        return [f"{where}: matches no oneOf branch"]
    missing: list[str] = []
    if isinstance(instance, dict) and "properties" in schema:
        for key, value in instance.items():
            if key not in schema["properties"]:
                if "additionalProperties" not in schema:
                    missing.append(f"{where}.{key}")
                continue
            missing += _undocumented(value, schema["properties"][key], root, f"{where}.{key}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance[:3]):
            missing += _undocumented(item, schema["items"], root, f"{where}[{i}]")
    return missing


def test_every_json_route_was_exercised(bodies: dict[str, tuple[int, Any]]) -> None:
    json_routes = {r.operation_id for r in ROUTES if r.reply in ("json", "created")}
    assert json_routes == set(bodies), "add a request for the new route to the `bodies` fixture"


def test_real_responses_validate_against_the_documented_schemas(bodies: dict[str, tuple[int, Any]]) -> None:
    doc = bodies["openapi"][1]
    for operation_id, (status, body) in sorted(bodies.items()):
        assert status in (200, 201), (operation_id, status, body)
        schema = _success_schema(doc, operation_id)
        assert schema, f"{operation_id}: the success schema is empty"
        validator = Draft202012Validator({**schema, "components": doc["components"]})
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
        assert not errors, (operation_id, errors[:5])
        assert not _undocumented(body, schema, doc, operation_id), operation_id


def test_a_body_that_breaks_its_schema_is_caught(bodies: dict[str, tuple[int, Any]]) -> None:
    doc = bodies["openapi"][1]
    device = dict(bodies["get_device"][1], liveness={"state": "asleep"}, surprise=1)
    schema = _success_schema(doc, "get_device")
    assert not Draft202012Validator({**schema, "components": doc["components"]}).is_valid(device)
    assert "get_device.surprise" in _undocumented(device, schema, doc, "get_device")
