"""JSON Schemas (2020-12, as OpenAPI 3.1 uses) of every JSON success body the server sends.

`BODY_OF` names one of these per route's operation id (the handler's name);
`openapi.document` puts them under `components/schemas`, and the integration tests validate real
responses against them and check that every member a response carries is described.
"""

from __future__ import annotations

from typing import Any, Final

STR: Final = {"type": "string"}
NSTR: Final = {"type": ["string", "null"]}
NUM: Final = {"type": "number"}
NNUM: Final = {"type": ["number", "null"]}
INT: Final = {"type": "integer", "minimum": 0}
OBJ: Final = {"type": "object"}
NOBJ: Final = {"type": ["object", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": sorted(required), "properties": {**required, **(optional or {})}, **extra}


GOLDEN: Final = {"type": ["object", "null"], "properties": {"sha256": STR, "length": INT, "atol": NUM, "rtol": NUM}}
FIGURES: Final = {
    "inferences": INT, "errors": INT,
    "mean_ms": {**NNUM, "description": "latency_sum / inferences"},
    "p50_ms": {**NNUM, "description": "interpolated within the fixed buckets (see the device's `percentiles`)"},
    "p95_ms": NNUM, "p99_ms": NNUM,
}

RESPONSES: Final[dict[str, Any]] = {
    "Variant": _object({"variant": STR, "format": STR, "sha256": STR, "length": INT,
                        "metrics": {**OBJ, "description": "measured size, latency and accuracy"}, "golden": GOLDEN}),
    "Version": _object({
        "name": STR, "version": STR, "created_at": NUM, "variants": {"type": "array", "items": _ref("Variant")},
        "compression": {**NOBJ, "description": 'null without compress; else {"status", "levels", "notes"}'},
        "inputs": {**OBJ, "description": "input name -> {dtype, shape}"},
        "outputs": {**OBJ, "description": "output name -> {dtype, shape}"}, "golden": GOLDEN,
    }, {"devices": {"type": "array", "description": "devices assigned this version: the variant each got and why",
                    "items": _object({"device_id": STR, "hardware_class": STR, "variant": STR, "why": STR})}}),
    "Pins": _object({"model": STR, "pins": {"type": "object", "additionalProperties": STR,
                                            "description": "scope (group:G | hardware:CLASS) -> variant"}}),
    "EnrollToken": _object({"name": STR, "group": STR, "created_at": NUM, "expires_at": NNUM,
                            "uses_left": {"type": ["integer", "null"], "minimum": 0}},
                           {"token": {**STR, "description": "only in the answer that created it"}}),
    "EnrollTokenList": _object({"enroll_tokens": {"type": "array", "items": _ref("EnrollToken")}}),
    "Reprovision": _object({"id": STR, "reprovision_approved_at": NUM}),
    "ModelList": _object({"models": {"type": "array", "items": _object(
        {"name": STR, "latest_version": STR, "versions": INT})}}),
    "Model": _object({"name": STR, "versions": {"type": "array", "items": _ref("Version")}}),
    "VersionFigures": _object({"model": STR, "version": STR, **FIGURES}, {"variant": STR}),
    "ServingFigures": _object({"model": STR, "version": STR, "variants": {"type": "array", "items": STR}, **FIGURES}),
    "Liveness": _object({
        "state": {"enum": ["online", "late", "offline"]},
        "last_seen": {**NNUM, "description": "epoch seconds; watch streams, status and telemetry move it"},
        "as_of": {**NUM, "description": "when the state was computed"},
        "expected_interval_s": NUM, "offline_after_s": NUM,
    }),
    "Device": _object({
        "id": STR, "hardware_class": STR, "backends": {"type": "array", "items": STR}, "group": STR,
        "labels": {"type": "object", "additionalProperties": STR}, "agent_version": STR, "enrolled_at": NUM,
        "last_seen": NNUM, "active_model": {**NSTR, "description": '"model@version" the device serves'},
        "state": {**NSTR, "description": "the update state last reported"}, "liveness": _ref("Liveness"),
        "deployment_id": NSTR,
        "last_error": {"type": ["object", "null"], "properties": {"reason": STR, "at": NNUM}},
        "assignment": {"type": ["object", "null"], "properties": {
            "deployment_id": STR, "model": STR, "version": STR, "variant": STR, "format": NSTR,
            "why": {**STR, "description": "why the server chose this variant for the device"}}},
        "telemetry": {"type": "array", "items": _ref("VersionFigures"),
                      "description": "one row per model, version and variant"},
        "serving": {"oneOf": [_ref("ServingFigures"), {"type": "null"}],
                    "description": "the active version's own figures; null until it reports"},
        "percentiles": {**STR, "description": "how percentiles are computed from the buckets"},
    }),
    "DeviceList": _object({"devices": {"type": "array", "items": _ref("Device")},
                           "next": {**NSTR, "description": "pass as ?after= for the next page; null on the last"}}),
    "Deployment": _object({
        "id": STR, "model": STR, "version": STR, "target": STR,
        "status": {"enum": ["active", "succeeded", "failed", "partial", "cancelled", "reverted"]},
        "created_at": NUM, "updated_at": NUM,
        "counts": {"type": "object", "required": ["total", "pending"], "additionalProperties": INT,
                   "description": "devices per final outcome; pending: not final yet"},
    }),
    "DeploymentDevices": _object({
        "devices": {"type": "array", "items": _object({
            "device_id": STR, "variant": STR, "sha256": STR, "state": STR, "outcome": NSTR, "reason": STR,
            "updated_at": NUM})},
        "next": {**NSTR, "description": "pass as ?after= for the next page; null on the last"},
    }),
    "DeploymentList": _object({"deployments": {"type": "array", "items": _ref("Deployment")}}),
    "GateCheck": _object({
        "cohort": {**STR, "description": "hardware class / back ends / variant"},
        "check": {**STR, "description": "as written, e.g. 'latency_p95 <= 1.2x control'"},
        "verdict": {"enum": ["pass", "fail", "no_data", "no_control"]},
        "value": {**NNUM, "description": "the new version's reading (a ratio for 'x control' checks)"},
        "threshold": NUM, "control": {**NNUM, "description": "the control group's reading, same window"},
        "inferences": INT, "devices": INT}),
    "RolloutStage": _object({
        "index": INT, "size": STR,
        "state": {"enum": ["pending", "running", "soaking", "passed", "failed", "inconclusive"]},
        "started_at": NNUM, "soak_started_at": NNUM, "ended_at": NNUM, "devices": INT,
        "cohorts": {"type": "object", "description": "cohort -> device state -> count",
                    "additionalProperties": {"type": "object", "additionalProperties": INT}},
        "checks": {"type": "array", "items": _ref("GateCheck"), "description": "the latest evaluation"}}),
    "Rollout": _object({
        "id": STR, "model": STR, "version": STR, "target": STR, "deployment_id": STR,
        "state": {"enum": ["running", "paused", "completed", "aborted", "rolled_back"]},
        "stage": {**INT, "description": "index of the current stage"},
        "final": {"type": "boolean"}, "healthy": {"type": "boolean", "description": "false once aborted or undone"},
        "spec": {**OBJ, "description": "the options the rollout was started with"},
        "created_at": NUM, "updated_at": NUM,
        "devices": {"type": "object", "required": ["total"], "additionalProperties": INT,
                    "description": "devices per state"},
        "failures": {"type": "array", "items": _object({"device_id": STR, "cohort": STR, "state": STR,
                                                        "reason": STR})},
        "stages": {"type": "array", "items": _ref("RolloutStage")},
        "log": {"type": "array", "description": "append-only: who did what, why, the numbers that decided",
                "items": _object({"at": NUM, "actor": STR, "event": STR, "from": STR, "to": STR, "reason": STR,
                                  "snapshot": OBJ})},
    }),
    "RolloutList": _object({"rollouts": {"type": "array", "items": _ref("Rollout")}}),
    "RolloutPlan": _object({
        "model": STR, "version": STR, "target": STR, "spec": OBJ, "devices": INT,
        "stages": {"type": "array", "items": _object({
            "index": INT, "size": STR, "adds": INT,
            "cohorts": {"type": "object", "additionalProperties": INT},
            "device_ids": {"type": "array", "items": STR, "description": "the first 1000"}})}}),
    "Alive": _object({"status": {"const": "alive"}}),
    "Readiness": _object({
        "status": {"enum": ["ready", "not_ready"]}, "failing": {"type": "array", "items": STR},
        "checks": {"type": "object", "additionalProperties": _object({"ok": {"type": "boolean"}}, {"detail": STR})},
    }),
    "OpenApiDocument": _object({"openapi": STR, "info": OBJ, "paths": OBJ}, {"components": OBJ, "servers": {
        "type": "array"}}),
}

# operation id (the handler's name) -> schema of its JSON success body. A JSON route
# missing here is documented as an object with no schema, and the tests point it out.
BODY_OF: Final[dict[str, str]] = {
    "openapi": "OpenApiDocument", "healthz": "Alive", "readyz": "Readiness",
    "list_models": "ModelList", "upload_model": "Version", "get_model": "Model", "get_version": "Version",
    "list_devices": "DeviceList", "get_device": "Device",
    "create_deployment": "Deployment", "list_deployments": "DeploymentList", "get_deployment": "Deployment",
    "list_deployment_devices": "DeploymentDevices",
    "cancel_deployment": "Deployment", "undo_deployment": "Deployment",
    "create_rollout": "Rollout", "plan_rollout": "RolloutPlan", "list_rollouts": "RolloutList",
    "get_rollout": "Rollout", "pause_rollout": "Rollout", "resume_rollout": "Rollout", "promote_rollout": "Rollout",
    "abort_rollout": "Rollout", "undo_rollout": "Rollout",
    "list_pins": "Pins", "put_pin": "Pins", "delete_pin": "Pins",
    "create_enroll_token": "EnrollToken", "list_enroll_tokens": "EnrollTokenList",
    "reprovision_device": "Reprovision",
}
