"""A fake Fleetcast REST server for `httpx.MockTransport`: the operator routes of
docs/architecture.md, kept in memory, so SDK and CLI tests run with no sockets."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import unquote

import httpx

TOKEN = "op-token"
SERVER = "http://fleetcast.test"


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


def multipart_fields(request: httpx.Request) -> dict[str, tuple[str | None, bytes]]:
    """{field: (filename, bytes)} of a multipart/form-data body."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message: Message = BytesParser(policy=HTTP).parsebytes(head + request.read())
    fields = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        fields[name] = (part.get_filename(), part.get_payload(decode=True))
    return fields


def summary(deployment: dict[str, Any]) -> dict[str, Any]:
    """What the server answers for a deployment: its counts, the device rows come in pages."""
    counts = {"total": len(deployment["devices"]), "pending": 0}
    for d in deployment["devices"]:
        key = d["outcome"] or "pending"
        counts[key] = counts.get(key, 0) + 1
    return {**{k: v for k, v in deployment.items() if k != "devices"}, "counts": counts}


class FakeServer:
    """Implements the REST API's operator routes; `devices` and outcomes are set by tests."""

    def __init__(self) -> None:
        self.models: dict[str, list[dict[str, Any]]] = {}
        self.blobs: dict[str, bytes] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.devices: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.uploads: list[dict[str, tuple[str | None, bytes]]] = []
        # called on each GET of a deployment: lets a test move devices along
        self.on_poll: Callable[[dict[str, Any]], None] = lambda deployment: None
        self.tamper_downloads = False
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., httpx.Response]]] = [
            ("POST", re.compile(r"/v1/models/(?P<name>[^/]+)"), self.push),
            ("GET", re.compile(r"/v1/models"), self.list_models),
            ("GET", re.compile(r"/v1/models/(?P<name>[^/]+)"), self.get_model),
            ("GET", re.compile(r"/v1/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)"), self.get_version),
            ("GET", re.compile(r"/v1/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/download"),
             self.download),
            ("POST", re.compile(r"/v1/deployments"), self.deploy),
            ("GET", re.compile(r"/v1/deployments"), self.list_deployments),
            ("GET", re.compile(r"/v1/deployments/(?P<id>[^/]+)"), self.get_deployment),
            ("GET", re.compile(r"/v1/deployments/(?P<id>[^/]+)/devices"), self.deployment_devices),
            ("POST", re.compile(r"/v1/deployments/(?P<id>[^/]+)/cancel"), self.cancel),
            ("GET", re.compile(r"/v1/devices"), self.list_devices),
            ("GET", re.compile(r"/v1/devices/(?P<id>[^/]+)"), self.get_device),
        ]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return error(401, "unauthorized", "wrong operator token")
        path = request.url.raw_path.decode().split("?")[0]
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match and method == request.method:
                return handler(request, **{k: unquote(v) for k, v in match.groupdict().items()})
        return error(404, "not_found", f"no route {request.method} {path}")

    # models

    def push(self, request: httpx.Request, name: str) -> httpx.Response:
        fields = multipart_fields(request)
        self.uploads.append(fields)
        if "model" not in fields:
            return error(400, "model_missing", "the multipart body has no model field")
        versions = self.models.setdefault(name, [])
        version = fields["version"][1].decode() if "version" in fields else str(len(versions) + 1)
        if any(v["version"] == version for v in versions):
            return error(409, "version_exists", f"{name}@{version} exists: choose another version")
        data = fields["model"][1]
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        doc = {
            "name": name, "version": version, "created_at": 1700000000.0,
            "variants": [{"variant": "original", "format": "onnx", "sha256": sha, "length": len(data),
                          "metrics": {"size_bytes": len(data)}}],
            "inputs": {"input": {"dtype": "float32", "shape": [None, 64]}},
            "outputs": {"probabilities": {"dtype": "float32", "shape": [None, 10]}},
        }
        versions.append(doc)
        return httpx.Response(201, json=doc)

    def list_models(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"models": [
            {"name": n, "latest_version": v[-1]["version"], "versions": len(v)} for n, v in self.models.items()]})

    def get_model(self, request: httpx.Request, name: str) -> httpx.Response:
        if name not in self.models:
            return error(404, "model_not_found", f"model {name!r} is not in the registry")
        return httpx.Response(200, json={"name": name, "versions": self.models[name]})

    def _version(self, name: str, version: str) -> dict[str, Any] | None:
        return next((v for v in self.models.get(name, ()) if v["version"] == version), None)

    def get_version(self, request: httpx.Request, name: str, version: str) -> httpx.Response:
        doc = self._version(name, version)
        if doc is None:
            return error(404, "model_not_found", f"{name}@{version} is not in the registry")
        return httpx.Response(200, json=doc)

    def download(self, request: httpx.Request, name: str, version: str) -> httpx.Response:
        doc = self._version(name, version)
        variant = request.url.params.get("variant", "original")
        found = next((v for v in (doc or {}).get("variants", ()) if v["variant"] == variant), None)
        if found is None:
            return error(404, "variant_not_found", f"{name}@{version} has no variant {variant}")
        data = self.blobs[found["sha256"]]
        return httpx.Response(200, content=data[:-1] + b"X" if self.tamper_downloads else data)

    # deployments

    def deploy(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        name = body["model"]
        if name not in self.models:
            return error(404, "model_not_found", f"model {name!r} is not in the registry")
        version = body.get("version") or self.models[name][-1]["version"]
        ids = list(self.devices) if body["target"] == "all" else body["target"].split(":", 1)[1].split(",")
        unknown = [i for i in ids if i not in self.devices]
        if unknown:
            return error(400, "target_invalid", f"unknown devices: {', '.join(unknown)}")
        dep_id = str(len(self.deployments) + 1)
        doc = {"id": dep_id, "model": name, "version": version, "target": body["target"],
               "status": "active", "created_at": 1700000100.0,
               "devices": [{"device_id": i, "state": "assigned", "outcome": None, "reason": "",
                            "updated_at": 1700000100.0} for i in ids]}
        self.deployments[dep_id] = doc
        return httpx.Response(201, json=summary(doc))

    def list_deployments(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"deployments": [summary(d) for d in self.deployments.values()]})

    def get_deployment(self, request: httpx.Request, id: str) -> httpx.Response:
        if id not in self.deployments:
            return error(404, "deployment_not_found", f"no deployment {id}")
        self.on_poll(self.deployments[id])
        return httpx.Response(200, json=summary(self.deployments[id]))

    def deployment_devices(self, request: httpx.Request, id: str) -> httpx.Response:
        if id not in self.deployments:
            return error(404, "deployment_not_found", f"no deployment {id}")
        after, limit = request.url.params.get("after", ""), int(request.url.params.get("limit", "1000"))
        rows = sorted((d for d in self.deployments[id]["devices"] if d["device_id"] > after),
                      key=lambda d: d["device_id"])
        return httpx.Response(200, json={"devices": rows[:limit],
                                         "next": rows[limit - 1]["device_id"] if len(rows) > limit else None})

    def cancel(self, request: httpx.Request, id: str) -> httpx.Response:
        doc = self.deployments.get(id)
        if doc is None:
            return error(404, "deployment_not_found", f"no deployment {id}")
        if doc["status"] != "active":
            return error(409, "deployment_ended", f"deployment {id} is {doc['status']}")
        doc["status"] = "cancelled"
        for d in doc["devices"]:
            d["outcome"] = d["outcome"] or "cancelled"
        return httpx.Response(200, json=summary(doc))

    # devices

    def list_devices(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"devices": list(self.devices.values())})

    def get_device(self, request: httpx.Request, id: str) -> httpx.Response:
        if id not in self.devices:
            return error(404, "device_not_found", f"no device {id!r}")
        return httpx.Response(200, json=self.devices[id])


def device_doc(device_id: str, *, hardware: str = "x86-cpu") -> dict[str, Any]:
    """A device document as the server writes it."""
    return {
        "id": device_id, "hardware_class": hardware, "backends": ["onnxruntime"], "group": "lab",
        "labels": {}, "agent_version": "0.1.0", "enrolled_at": 1700000000.0, "last_seen": 1700000200.0,
        "active_model": "digits@1", "state": "serving", "deployment_id": "1",
        "assignment": {"deployment_id": "1", "model": "digits", "version": "1", "variant": "original"},
        "telemetry": [{"model": "digits", "version": "1", "variant": "original", "inferences": 120,
                       "errors": 2, "mean_ms": 0.5, "p50_ms": 0.42, "p95_ms": 1.3, "p99_ms": 2.5}],
        "serving": {"model": "digits", "version": "1", "variants": ["original"], "inferences": 120,
                    "errors": 2, "mean_ms": 0.5, "p50_ms": 0.42, "p95_ms": 1.3, "p99_ms": 2.5},
        "liveness": {"state": "online", "last_seen": 1700000200.0, "as_of": 1700000210.0,
                     "expected_interval_s": 60.0, "offline_after_s": 300.0},
        "percentiles": "linear within the fixed latency buckets",
    }
