"""The dashboard over HTTP, as a browser without JavaScript sees it: logins, roles, CSRF,
headers, the device table's URL and its CSV export, on a real server process."""

from __future__ import annotations

import csv
import html
import http.cookiejar
import io
import json
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetcast.proto.v1 import device_pb2 as pb
from tests.integration.server.conftest import RunningServer, launch
from tests.support import models

HARDWARE = ("x86-cpu", "rk3399", "jetson")
DEVICES = [(f"tbl-{i:02d}", HARDWARE[i % 3]) for i in range(12)]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Visitor:
    """A cookie-keeping client that does not follow redirects (to see each 303)."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.jar = http.cookiejar.CookieJar()
        context = ssl.create_default_context(cafile=str(server.data / "server-ca.pem"))
        self.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                                  urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect)

    def call(self, method: str, path: str, fields: dict[str, str] | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        body = None if fields is None else urllib.parse.urlencode(fields).encode()
        h = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
        req = urllib.request.Request(self.server.http + path, data=body, method=method, headers={**h, **(headers or {})})
        try:
            with self.opener.open(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def get(self, path: str) -> tuple[int, dict[str, str], str]:
        return self.call("GET", path)

    def login(self, token: str) -> tuple[int, dict[str, str], str]:
        status, _, page = self.get("/ui/login")
        assert status == 200, page
        return self.call("POST", "/ui/login", {"login_csrf": _hidden(page, "login_csrf"), "token": token,
                                               "next": "/ui/devices"})

    def csrf(self) -> str:
        status, _, page = self.get("/ui/")
        assert status == 200
        return _hidden(page, "csrf")


def _hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no hidden field {name} in the page"
    return found.group(1)


def _viewer_token(server: RunningServer, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "fleetcast.sdk.console", "token", "create", "--viewer", "--data",
                          str(server.data), "--name", name, "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["token"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    """A server with a dozen enrolled devices on three hardware classes and one active deployment."""
    with launch(tmp_path_factory.mktemp("dashboard")) as server:
        for device_id, hardware in DEVICES:
            server.stub().Enroll(pb.EnrollRequest(device_id=device_id, hardware_class=hardware, backends=["onnxruntime"],
                                                  enroll_token=server.enroll_token, group="tbl"), timeout=10)
        status, _ = server.upload("tbl-model", {"model": models.to_bytes(models.tiny_classifier(seed=9))})
        assert status == 201
        status, dep = server.json("POST", "/v1/deployments", {"model": "tbl-model", "target": "group:tbl"})
        assert status == 201, dep
        yield server, dep["id"]


def test_pages_send_people_to_the_login_page_and_changes_need_a_session(fleet) -> None:
    server, deployment_id = fleet
    v = Visitor(server)
    status, headers, _ = v.get("/ui/devices?hardware=rk3399")
    assert status == 303 and headers["Location"] == "/ui/login?next=/ui/devices%3Fhardware%3Drk3399"
    status, _, page = v.call("POST", f"/ui/deployments/{deployment_id}/cancel", {"csrf": "x"})
    assert status == 401 and "log in first" in page
    assert server.json("GET", f"/v1/deployments/{deployment_id}")[1]["status"] == "active"


def test_login_opens_a_strict_httponly_session_and_logout_ends_it(fleet) -> None:
    server, _ = fleet
    v = Visitor(server)
    status, headers, _ = v.login(server.operator_token)
    assert status == 303 and headers["Location"] == "/ui/devices"
    cookie = headers["Set-Cookie"]
    assert "fleetcast_session=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" in cookie   # served over TLS
    status, _, page = v.get("/ui/")
    assert status == 200 and 'class="role role-operator"' in page
    stolen = next(c.value for c in v.jar if c.name == "fleetcast_session")
    status, headers, _ = v.call("POST", "/ui/logout", {"csrf": _hidden(page, "csrf")})
    assert status == 303 and headers["Location"] == "/ui/login"
    assert v.get("/ui/")[0] == 303
    # The old cookie value is dead on the server, not only forgotten by this client.
    replay = Visitor(server)
    status, _, _ = replay.call("GET", "/ui/", headers={"Cookie": f"fleetcast_session={stolen}"})
    assert status == 303


def test_a_login_without_its_form_token_is_refused(fleet) -> None:
    server, _ = fleet
    v = Visitor(server)
    status, _, page = v.call("POST", "/ui/login", {"login_csrf": "forged", "token": server.operator_token})
    assert status == 403 and "login form expired" in page
    assert not any(c.name == "fleetcast_session" for c in v.jar)


def test_a_change_without_the_session_csrf_token_or_from_elsewhere_is_refused(fleet) -> None:
    server, deployment_id = fleet
    v = Visitor(server)
    v.login(server.operator_token)
    path = f"/ui/deployments/{deployment_id}/cancel"
    assert v.call("POST", path, {})[0] == 403
    assert v.call("POST", path, {"csrf": "guessed"})[0] == 403
    status, _, page = v.call("POST", path, {"csrf": v.csrf()}, headers={"Origin": "https://evil.example"})
    assert status == 403 and "evil.example" in page
    assert server.json("GET", f"/v1/deployments/{deployment_id}")[1]["status"] == "active"


def test_a_viewer_sees_every_page_but_cannot_change_anything(fleet) -> None:
    server, deployment_id = fleet
    v = Visitor(server)
    assert v.login(_viewer_token(server, "viewer-http"))[0] == 303
    for path in ("/ui/", "/ui/devices", f"/ui/devices/{DEVICES[0][0]}", "/ui/models", "/ui/models/tbl-model",
                 "/ui/deployments", f"/ui/deployments/{deployment_id}"):
        status, _, page = v.get(path)
        assert status == 200, (path, page[:300])
        assert 'class="role role-viewer"' in page
    assert 'id="cancel"' not in v.get(f"/ui/deployments/{deployment_id}")[2]
    status, _, page = v.call("POST", f"/ui/deployments/{deployment_id}/cancel", {"csrf": v.csrf()})
    assert status == 403 and "viewer session" in page
    assert server.json("GET", f"/v1/deployments/{deployment_id}")[1]["status"] == "active"
    # Viewer tokens are stored hashed, in a private file.
    stored = server.data / "viewer-tokens.json"
    assert stored.stat().st_mode & 0o777 == 0o600 and "fcv-" not in stored.read_text()


def test_every_dashboard_response_carries_a_strict_csp_and_no_inline_code(fleet) -> None:
    server, deployment_id = fleet
    anonymous = Visitor(server)
    v = Visitor(server)
    v.login(server.operator_token)
    for visitor, path in [(anonymous, "/ui/login"), (anonymous, "/ui/")] + [(v, p) for p in (
            "/ui/", "/ui/devices", f"/ui/devices/{DEVICES[1][0]}", "/ui/models/tbl-model",
            f"/ui/deployments/{deployment_id}", "/ui/devices?sort=nope", "/ui/static/app.css")]:
        status, headers, page = visitor.get(path)
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe" not in csp and "default-src 'none'" in csp, path
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
        if headers.get("Content-Type", "").startswith("text/html"):
            assert not re.search(r"<script(?![^>]*\bsrc=)", page), path       # every script is a file
            assert not re.search(r"\s(style|on[a-z]+)=", page), path         # no inline style or handlers


def _api_devices(server: RunningServer) -> list[dict[str, Any]]:
    return [d for d in server.json("GET", "/v1/devices")[1]["devices"] if d["group"] == "tbl"]


def test_the_device_table_filters_sorts_and_pages_in_the_url(fleet) -> None:
    server, _ = fleet
    v = Visitor(server)
    v.login(server.operator_token)
    status, _, page = v.get("/ui/devices?group=tbl&hardware=rk3399&sort=id&order=desc&per=2&page=2")
    assert status == 200
    expected = sorted((d["id"] for d in _api_devices(server) if d["hardware_class"] == "rk3399"), reverse=True)
    shown = re.findall(r'<tr data-device="([^"]+)"', page)
    assert shown == expected[2:4]
    assert f'<b id="device-total">{len(expected)}</b>' in page
    # The links keep every filter: the previous page, and the id header that flips the order.
    assert '<a rel="prev" href="/ui/devices?hardware=rk3399&amp;group=tbl&amp;order=desc&amp;per=2">' in page
    assert '<a href="/ui/devices?hardware=rk3399&amp;group=tbl&amp;per=2">device' in page
    status, _, page = v.get("/ui/devices?liveness=sometimes")
    assert status == 400 and "liveness" in page


def test_the_csv_export_has_every_filtered_device_as_the_api_lists_it(fleet) -> None:
    server, _ = fleet
    v = Visitor(server)
    v.login(server.operator_token)
    status, headers, body = v.get("/ui/devices.csv?group=tbl&hardware=jetson&per=1")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body)))
    api = {d["id"]: d for d in _api_devices(server) if d["hardware_class"] == "jetson"}
    assert [r["id"] for r in rows] == sorted(api)      # every page, not the first one only
    for r in rows:
        assert r["hardware_class"] == "jetson" and r["liveness"] == api[r["id"]]["liveness"]["state"]
        assert float(r["last_seen"]) == pytest.approx(api[r["id"]]["last_seen"])


def test_failed_logins_answer_late_then_with_429(tmp_path: Path) -> None:
    with launch(tmp_path) as server:
        v = Visitor(server)
        started = time.monotonic()
        for _ in range(5):
            status, _, page = v.login("wrong-token")
            assert status == 401 and "neither the operator token nor a viewer token" in page
        assert time.monotonic() - started >= 5 * 0.5
        status, _, page = v.login(server.operator_token)   # even the right token waits its turn
        assert status == 429 and "failed logins" in page


def _rollout_when(server: RunningServer, rollout_id: str, done: Any, *, timeout_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status, doc = server.json("GET", f"/v1/rollouts/{rollout_id}")
        assert status == 200, doc
        if done(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(0.2)


def test_the_rollout_pages_show_each_gate_as_the_api_gives_it(fleet) -> None:
    server, _ = fleet
    for i in range(4):
        server.stub().Enroll(pb.EnrollRequest(device_id=f"ro-{i}", hardware_class=HARDWARE[i % 2],
                                              backends=["onnxruntime"], enroll_token=server.enroll_token,
                                              group="ro"), timeout=10)
    for version in ("1", "2"):
        status, _ = server.upload("ro-model", {"model": models.to_bytes(models.tiny_classifier(seed=int(version))),
                                               "version": version})
        assert status == 201
    # Enrolled but never serving: each device times out, and the default `serving` gate fails the stage.
    status, started = server.json("POST", "/v1/rollouts", {
        "model": "ro-model", "version": "2", "target": "group:ro", "stages": "1,100%", "soak_s": 600,
        "device_timeout_s": 1, "evaluation_interval_s": 0.2})
    assert status == 201, started
    rollout_id = started["id"]
    doc = _rollout_when(server, rollout_id, lambda d: d["final"] and d["stages"][0]["checks"])
    assert doc["state"] == "aborted" and doc["stages"][0]["checks"], doc

    v = Visitor(server)
    assert v.login(_viewer_token(server, "viewer-rollouts"))[0] == 303
    status, headers, page = v.get("/ui/rollouts")
    assert status == 200 and 'class="role role-viewer"' in page
    assert '<a href="/ui/rollouts" aria-current="page">Rollouts</a>' in page
    row = re.search(rf'<tr data-rollout="{rollout_id}">.*?</tr>', page, re.S)
    assert row, page[:2000]
    assert f'data-col="state">{doc["state"]}<' in row.group(0)
    assert f'data-col="stage">{doc["stage"] + 1}/{len(doc["stages"])}<' in row.group(0)
    assert "default-src 'none'" in headers["Content-Security-Policy"]

    status, headers, page = v.get(f"/ui/rollouts/{rollout_id}")
    assert status == 200, page[:500]
    assert f"Rollout {rollout_id}" in page and '<span id="state" class="status status-aborted">aborted</span>' in page
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert not re.search(r"<script(?![^>]*\bsrc=)", page) and not re.search(r"\s(style|on[a-z]+)=", page)
    assert "<form" not in page.replace('<form class="logout"', "")        # read-only: no verbs on the page
    for stage in doc["stages"]:
        section = re.search(rf'<section class="stage" id="stage-{stage["index"]}".*?</section>', page, re.S)
        assert section and f'data-col="stage-state">{stage["state"]}<' in section.group(0)
        shown = re.findall(r'<tr class="check" data-cohort="([^"]*)" data-check="([^"]*)">(.*?)</tr>',
                           section.group(0), re.S)
        assert len(shown) == len(stage["checks"])
        for (cohort, check, cells), c in zip(shown, stage["checks"]):
            assert (html.unescape(cohort), html.unescape(check)) == (c["cohort"], c["check"])
            values = {k: html.unescape(x) for k, x in re.findall(r'data-col="([a-z]+)">(?:<span[^>]*>)?([^<]*)<', cells)}
            assert values == {"value": "n/a" if c["value"] is None else str(c["value"]),
                              "threshold": str(c["threshold"]),
                              "control": "n/a" if c["control"] is None else str(c["control"]),
                              "inferences": str(c["inferences"]), "devices": str(c["devices"]),
                              "verdict": c["verdict"]}
    assert any(c["verdict"] == "fail" and c["value"] is not None for c in doc["stages"][0]["checks"])
    events = re.findall(r'<tr class="log-entry">.*?data-col="event">([^<]*)<', page, re.S)
    assert events == [e["event"] for e in doc["log"]]

    status, _, page = v.get("/ui/rollouts/ro-0000000000000000")
    assert status == 404 and "does not exist" in page and "&lt;" not in page
    status, _, page = v.get("/ui/rollouts/%3Cb%3Ex")
    assert status == 404 and "<b>x" not in page and "&lt;b&gt;x" in page     # the id is escaped
