"""The OpenAPI 3.1 document, generated from the route table."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fleetcast.server.api import schemas
from fleetcast.server.api.routes import Route

ERROR = {"$ref": "#/components/schemas/Error"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"],
                                 "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
    },
    "ModelUpload": {
        "type": "object", "required": ["model"],
        "properties": {
            "model": {"type": "string", "contentMediaType": "application/octet-stream", "description": "the .onnx or .tflite file"},
            "golden": {"type": "string", "contentMediaType": "application/octet-stream",
                       "description": ".npz with keys input:<name> and optional output:<name>"},
            "version": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$",
                        "description": "default: the next integer"},
            "compress": {"type": "string", "description": "comma-separated compression levels, built in the "
                         "background: the version's `compression.status` says when they are done"},
            "targets": {"type": "string", "description": "comma-separated per-target builds (mnn, openvino, "
                        "rknn-rk3588, rknn-rk3566), built in the background like compression levels"},
            "calibration": {"type": "string", "contentMediaType": "application/octet-stream",
                            "description": ".npz: per model input name, an array whose first axis is the sample "
                                           "axis (at most 10 000 samples); used with compress"},
            "eval": {"type": "string", "contentMediaType": "application/octet-stream",
                     "description": ".npz like calibration, plus optional `labels` (one integer per sample); "
                                    "quality figures are measured on it"},
        },
    },
    "PinRequest": {
        "type": "object", "required": ["variant"],
        "properties": {"variant": {"type": "string", "description": "the variant devices of the scope get"}},
    },
    "DeploymentRequest": {
        "type": "object", "required": ["model"],
        "properties": {
            "model": {"type": "string"},
            "version": {"type": "string", "description": "default: the latest version"},
            "target": {"type": "string", "description": "all | group:G | device:ID[,ID...]", "default": "all"},
        },
    },
    "RolloutRequest": {
        "type": "object", "required": ["model"],
        "properties": {
            "model": {"type": "string"},
            "version": {"type": "string", "description": "default: the latest version"},
            "target": {"type": "string", "description": "all | group:G | device:ID[,ID...]", "default": "all"},
            "stages": {"type": "string", "default": "1,10%,50%,100%",
                       "description": "cumulative sizes: device counts or percentages of the target"},
            "soak_s": {"type": "number", "default": 60}, "device_timeout_s": {"type": "number", "default": 600},
            "max_in_flight": {"type": "integer", "default": 0}, "start_rate_per_s": {"type": "number", "default": 0},
            "gates": {"type": "array", "items": {"type": "string"},
                      "description": "e.g. 'latency_p95 <= 1.2x control', 'error_rate <= 0.01'"},
            "min_inferences": {"type": "integer", "default": 100}, "min_devices": {"type": "integer", "default": 1},
            "on_inconclusive": {"enum": ["pause", "abort"]}, "on_fail": {"enum": ["abort", "pause"]},
            "hold_back": {"type": "boolean", "default": False},
            "evaluation_interval_s": {"type": "number", "default": 1},
        },
    },
}

BODIES: dict[str, dict[str, Any]] = {
    "model-upload": {"required": True, "content": {"multipart/form-data": {
        "schema": {"$ref": "#/components/schemas/ModelUpload"}}}},
    "deployment": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/DeploymentRequest"}}}},
    "enroll-token": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "properties": {
            "group": {"type": "string", "default": ""},
            "expires_s": {"type": ["number", "null"], "description": "lifetime in seconds (absent or null: none)"},
            "uses": {"type": ["integer", "null"], "minimum": 1,
                     "description": "enrollments admitted (absent or null: no limit)"},
        }}}}},
    "pin": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/PinRequest"}}}},
    "rollout": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/RolloutRequest"}}}},
}


def _operation(route: Route) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
        for p in re.findall(r"\{(\w+)\}", route.path)
    ]
    params += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}} for q in route.query]
    ok = "201" if route.reply == "created" else "200"
    media = {"binary": "application/octet-stream", "text": "text/plain"}.get(route.reply, "application/json")
    body = schemas.BODY_OF.get(route.operation_id)
    schema: dict[str, Any] = ({"$ref": f"#/components/schemas/{body}"} if body else
                              {"type": "string"} if media == "text/plain" else
                              {"type": "string", "format": "binary"} if media != "application/json" else {})
    responses: dict[str, Any] = {ok: {"description": "success", "content": {media: {"schema": schema}}}}
    if route.operation_id == "readyz":
        responses["503"] = {"description": "not ready: `failing` names the parts",
                            "content": {"application/json": {"schema": schema}}}
    if route.reply == "binary" and "artifacts" in route.path:
        responses["206"] = {"description": "the requested Range"}
        responses["416"] = {"description": "the Range is not satisfiable"}
    for status, text in (("400", "the request is not valid"), ("401", "missing or wrong bearer token"),
                         ("404", "not found"), ("409", "conflict"), ("413", "too large"),
                         ("422", "the model or request cannot be used")):
        if status == "401" and route.auth == "public":
            continue
        responses.setdefault(status, {"description": text, "content": {"application/json": {"schema": ERROR}}})
    op: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary, "responses": responses}
    if params:
        op["parameters"] = params
    if route.body != "none":
        op["requestBody"] = BODIES[route.body]
    schemes = {"operator": "operatorToken", "device": "deviceToken", "metrics": "metricsToken"}
    op["security"] = [] if route.auth == "public" else [{schemes[route.auth]: []}]
    return op


def document(routes: Sequence[Route], *, server_url: str | None = None) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Fleetcast server", "version": "1",
                 "description": "Operator REST API and device data plane of the Fleetcast server."},
        "paths": paths,
        "components": {
            "schemas": {**SCHEMAS, **schemas.RESPONSES},
            "securitySchemes": {
                "operatorToken": {"type": "http", "scheme": "bearer", "description": "DATA/operator-token"},
                "deviceToken": {"type": "http", "scheme": "bearer", "description": "the token Enroll returned"},
                "metricsToken": {"type": "http", "scheme": "bearer",
                                 "description": "DATA/metrics-token (read-only: /metrics); the operator token works too"},
            },
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
