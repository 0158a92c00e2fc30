from __future__ import annotations

import os
import stat

from fleetcast.server.api.routes import ROUTES
from tests.integration.server.conftest import MAX_UPLOAD_BYTES, RunningServer
from tests.support import models


def _stored_blobs(server: RunningServer) -> set[str]:
    return {p.name for p in (server.data / "blobs" / "sha256").rglob("*") if p.is_file()}


def test_first_start_writes_secret_tokens_and_the_trust_root(server: RunningServer) -> None:
    for name in ("operator-token", "enroll-token"):
        assert stat.S_IMODE(os.stat(server.data / name).st_mode) == 0o600
    assert b"fleetcast_trust_root" in (server.data / "trust-root.json").read_bytes()


def test_upload_of_a_real_onnx_model_returns_its_version_document(server: RunningServer) -> None:
    data = models.to_bytes(models.tiny_classifier(seed=3))
    status, doc = server.upload("rest-model", {"model": data, "version": "1.0"})
    assert status == 201, doc
    assert doc["name"] == "rest-model" and doc["version"] == "1.0"
    [variant] = doc["variants"]
    assert variant["variant"] == "original" and variant["length"] == len(data)
    status, _, body = server.request("GET", "/v1/models/rest-model/versions/1.0/download?variant=original")
    assert status == 200 and body == data
    status, listing = server.json("GET", "/v1/models")
    assert {"name": "rest-model", "latest_version": "1.0", "versions": 1} in listing["models"]


def test_garbage_is_refused_with_a_4xx_and_nothing_is_stored(server: RunningServer) -> None:
    before = _stored_blobs(server)
    status, doc = server.upload("garbage", {"model": b"\x00not onnx\xff" * 100})
    assert status == 422
    assert doc["error"]["code"] == "model_invalid" and "ONNX" in doc["error"]["message"]
    status, _ = server.upload("garbage", {"model": b""})
    assert status == 422
    assert _stored_blobs(server) == before
    assert server.json("GET", "/v1/models/garbage")[0] == 404


def test_an_upload_over_the_limit_is_refused_and_nothing_is_stored(server: RunningServer) -> None:
    before = _stored_blobs(server)
    data = models.to_bytes(models.sized_model(0.5, seed=4))
    assert len(data) > MAX_UPLOAD_BYTES
    status, doc = server.upload("too-big", {"model": data})
    assert status == 413 and doc["error"]["code"] == "too_large"
    assert _stored_blobs(server) == before
    assert list((server.data / "blobs" / "tmp").iterdir()) == []


def test_operator_routes_need_the_operator_token(server: RunningServer) -> None:
    for route in ROUTES:
        if route.auth == "public":
            continue
        path = route.path.replace("{sha256}", "0" * 64).replace("{", "").replace("}", "")
        status, doc = server.json(route.method, path, token=None)
        assert status == 401, (route.method, path)
        assert doc["error"]["code"] == "unauthenticated"
    assert server.json("GET", "/v1/devices", token="not-the-token")[0] == 401


def test_openapi_document_lists_every_route(server: RunningServer) -> None:
    status, doc = server.json("GET", "/v1/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.1")
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == {(r.method, r.path) for r in ROUTES}
    assert len(listed) == len(ROUTES) >= 18  # 15 API routes and /healthz, /readyz, /metrics


def test_deployment_to_an_unknown_device_is_a_404_naming_it(server: RunningServer) -> None:
    server.upload("dep-model", {"model": models.to_bytes(models.tiny_classifier(seed=5))})
    status, doc = server.json("POST", "/v1/deployments", {"model": "dep-model", "target": "device:nobody-here"})
    assert status == 404 and "nobody-here" in doc["error"]["message"]
    status, doc = server.json("POST", "/v1/deployments", {"model": "dep-model", "target": "group:empty"})
    assert status == 422 and doc["error"]["code"] == "target_empty"


def test_a_deployment_answers_with_counts_and_pages_its_device_rows(server: RunningServer) -> None:
    ids = [f"pager-{i}" for i in (3, 10, 1, 7, 2)]
    for device_id in ids:
        server.enroll(device_id, group="pagers")
    server.upload("pager-model", {"model": models.to_bytes(models.tiny_classifier(seed=6))})
    status, created = server.json("POST", "/v1/deployments", {"model": "pager-model", "target": "group:pagers"})
    assert status == 201 and created["counts"] == {"total": 5, "pending": 5} and "devices" not in created
    assert server.json("GET", f"/v1/deployments/{created['id']}")[1]["counts"]["total"] == 5
    seen, after, pages = [], "", 0
    while True:
        status, page = server.json("GET", f"/v1/deployments/{created['id']}/devices?limit=2"
                                   + (f"&after={after}" if after else ""))
        assert status == 200 and len(page["devices"]) <= 2
        seen += [d["device_id"] for d in page["devices"]]
        pages += 1
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == sorted(ids) and pages == 3
    for query, named in (("limit=0", "limit"), ("limit=10001", "limit"), ("limit=x", "limit"),
                         ("after=../etc", "after")):
        status, doc = server.json("GET", f"/v1/deployments/{created['id']}/devices?{query}")
        assert status == 400 and f'"{named}"' in doc["error"]["message"], (query, doc)
    assert server.json("GET", "/v1/deployments/no-such/devices")[0] == 404


def test_the_device_list_comes_in_pages_with_each_device_document(server: RunningServer) -> None:
    for device_id in ("lister-b", "lister-a", "lister-c"):
        server.enroll(device_id, group="listers")
    seen, after = [], ""
    while True:
        status, page = server.json("GET", "/v1/devices?limit=2" + (f"&after={after}" if after else ""))
        assert status == 200 and len(page["devices"]) <= 2
        seen += page["devices"]
        if page["next"] is None:
            break
        after = page["next"]
    ids = [d["id"] for d in seen]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert {"lister-a", "lister-b", "lister-c"} <= set(ids)
    one = next(d for d in seen if d["id"] == "lister-b")
    assert one == server.json("GET", "/v1/devices/lister-b")[1] | {"liveness": one["liveness"]}
    assert server.json("GET", "/v1/devices?limit=99999")[0] == 400
