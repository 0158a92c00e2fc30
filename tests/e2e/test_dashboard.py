"""The dashboard in Chromium against a real server, a simulated fleet and one real agent.

Every number a page shows is checked against the REST API read around it; live
updates arrive over server-sent events without a reload; a stopped agent turns late
then offline on its page; a viewer cannot change anything; pages read without
JavaScript; no page trips its Content-Security-Policy. Screenshots of the main pages
go to test-artifacts/dashboard/ (docs/dashboard/ holds a reviewed copy).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support import models
from tests.support.deployments import push, wait_serving
from tests.support.pages import REPO, launch_chromium
from tests.support.processes import AgentProcess, ServerProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "test-artifacts" / "dashboard"
INTERVAL_S = 2.0
OFFLINE_AFTER_S = 6.0
COHORTS = {"cpu": ("x86-cpu", 24, 5), "rk": ("rk3399", 12, 30)}   # name -> hardware, devices, median ms
AGENT = "dash-agent-1"
FLEET_SIZE = sum(n for _, n, _ in COHORTS.values()) + 1


def _spki_pin(cert_pem: bytes) -> str:
    """Chromium's --ignore-certificate-errors-spki-list value: the server key pinned, nothing else trusted."""
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    return base64.b64encode(hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
                            .digest()).decode()


@dataclass
class Dash:
    server: ServerProcess
    agent: AgentProcess
    browser: Any
    tmp: Path
    deployment_id: str
    simulator: subprocess.Popen[bytes]
    problems: list[str] = field(default_factory=list)

    def stop_simulator(self) -> None:
        """Ends the simulated fleet (its telemetry and watch streams): fleet-wide sums then hold still."""
        if self.simulator.poll() is None:
            self.simulator.send_signal(signal.SIGINT)
            try:
                self.simulator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.simulator.kill()
                self.simulator.wait()

    def api(self, path: str) -> Any:
        req = urllib.request.Request(self.server.http + path,
                                     headers={"Authorization": f"Bearer {self.server.operator_token}"})
        context = ssl.create_default_context(cafile=str(self.server.server_ca))
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            return json.loads(r.read())

    def page(self, *, token: str | None = None, javascript: bool = True) -> Any:
        """A fresh context's page, logged in through the login form with `token` (operator by default)."""
        context = self.browser.new_context(java_script_enabled=javascript, viewport={"width": 1280, "height": 900})
        context.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation',"
                                " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
        page = context.new_page()
        page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(str(e)))
        page.goto(self.server.http + "/ui/")
        assert "/ui/login" in page.url
        page.fill("input[name=token]", token or self.server.operator_token)
        page.click("button[type=submit]")
        try:
            page.wait_for_url(re.compile(r".*/ui/$"))
        except Exception:
            raise AssertionError(f"login ended at {page.url}: {page.content()[:3000]}")
        return page

    def assert_clean(self, page: Any) -> None:
        """No CSP violation and no script error on this page."""
        assert page.evaluate("() => window.__csp") == []
        assert [p for p in self.problems if "Content Security Policy" in p or "Error" in p] == []

    def shot(self, page: Any, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def stable(read_api: Callable[[], Any], read_page: Callable[[], Any], *, tries: int = 10) -> tuple[Any, Any]:
    """(api, page) read while the API answered the same before and after the page was read."""
    for _ in range(tries):
        before = read_api()
        shown = read_page()
        if read_api() == before:
            return before, shown
        time.sleep(0.3)
    raise AssertionError("the API's figures kept changing while the page was read")


def _simulator(server: ServerProcess, tmp: Path) -> subprocess.Popen[bytes]:
    token_file = tmp / "sim-enroll-token"
    token_file.write_text(server.enroll_token + "\n")
    token_file.chmod(0o600)
    cmd = [sys.executable, "-m", "fleetcast.sdk.console", "simulate", "--grpc", server.grpc,
           "--enroll-token-file", str(token_file), "--trust-root", str(server.trust_root),
           "--server-ca", str(server.server_ca), "--duration-s", "900", "--telemetry-interval-s", "1",
           "--prefix", "sim-"]
    for name, (hardware, n, latency_ms) in COHORTS.items():
        cmd += ["--cohort", f"name={name},devices={n},hardware={hardware},latency_ms={latency_ms}"]
    return subprocess.Popen(cmd, stdout=open(tmp / "sim.log", "wb"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("dash")
    server = ServerProcess(tmp / "server", extra_args=["--device-interval-s", str(INTERVAL_S),
                                                       "--device-offline-after-s", str(OFFLINE_AFTER_S)])
    server.start()
    sim = agent = None
    try:
        model = tmp / "digits.onnx"
        model.write_bytes(models.to_bytes(models.tiny_classifier(seed=3)))
        push(server, model, name="digits")
        sim = _simulator(server, tmp)
        agent = AgentProcess(tmp / "agent", server=server, device_id=AGENT, hardware="x86-cpu",
                             trust_root=server.trust_root, enroll_token=server.enroll_token).start()
        with server.client() as fc:
            wait_for(lambda: len(fc.list_devices()) == FLEET_SIZE, timeout_s=60, what="the fleet enrolled",
                     context=lambda: (tmp / "sim.log").read_text()[-2000:])
            deployment_id = fc.deploy("digits", to="all").id
            wait_for(lambda: fc.get_deployment(deployment_id).raw["counts"]["pending"] == 0, timeout_s=90,
                     what="every device installed", context=agent.log_tail)
        wait_serving(agent, "digits", "1")
        with sync_playwright() as playwright:
            pin = _spki_pin((server.tls_dir / "server.pem").read_bytes())
            browser = launch_chromium(playwright, [f"--ignore-certificate-errors-spki-list={pin}"])
            try:
                yield Dash(server=server, agent=agent, browser=browser, tmp=tmp, deployment_id=deployment_id,
                           simulator=sim)
            finally:
                browser.close()
    finally:
        if sim is not None:
            sim.send_signal(signal.SIGINT)
            try:
                sim.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sim.kill()
        if agent is not None:
            agent.stop()
        server.stop()


def _fleet_from_api(d: Dash) -> dict[str, Any]:
    devices = d.api("/v1/devices")["devices"]
    by_state = {s: 0 for s in ("online", "late", "offline")}
    by_hardware: dict[str, dict[str, int]] = {}
    for x in devices:
        by_state[x["liveness"]["state"]] += 1
        by_hardware.setdefault(x["hardware_class"], {"online": 0, "late": 0, "offline": 0})[x["liveness"]["state"]] += 1
    return {"total": len(devices), "states": by_state, "hardware": by_hardware}


def _fleet_from_page(page: Any) -> dict[str, Any]:
    page.reload()
    hardware = {}
    for row in page.locator("#by-hardware tbody tr[data-hardware]").all():
        hardware[row.get_attribute("data-hardware")] = {
            s: int(row.locator(f"td[data-col={s}]").inner_text()) for s in ("online", "late", "offline")}
    return {"total": int(page.inner_text("#total-devices")),
            "states": {s: int(page.inner_text(f"#devices-{s}")) for s in ("online", "late", "offline")},
            "hardware": hardware}


def test_the_overview_shows_the_fleet_as_the_api_counts_it(dash: Dash) -> None:
    page = dash.page()
    api, shown = stable(lambda: _fleet_from_api(dash), lambda: _fleet_from_page(page))
    assert shown == api and api["total"] == FLEET_SIZE
    assert set(shown["hardware"]) == {"x86-cpu", "rk3399"}
    versions = {r.get_attribute("data-version"): int(r.locator("td[data-col=devices]").inner_text())
                for r in page.locator("#by-version tbody tr").all()}
    assert versions == {"digits@1": FLEET_SIZE}
    assert page.locator(f'#deployments tr[data-deployment="{dash.deployment_id}"]').count() == 1
    assert page.locator(".asof time").count() >= 1
    dash.shot(page, "overview")
    dash.assert_clean(page)


def test_device_table_filters_sort_and_pages_round_trip_in_the_url(dash: Dash) -> None:
    page = dash.page()
    page.goto(dash.server.http + "/ui/devices?per=10")
    page.select_option("select[name=hardware]", "rk3399")
    page.click(".filters button[type=submit]")
    page.wait_for_url(re.compile(r".*hardware=rk3399.*"))
    rk = sorted(d["id"] for d in dash.api("/v1/devices")["devices"] if d["hardware_class"] == "rk3399")
    assert page.inner_text("#device-total") == str(len(rk))
    assert [r.get_attribute("data-device") for r in page.locator("#device-table tbody tr").all()] == rk[:10]
    page.click("a[rel=next]")
    page.wait_for_url(re.compile(r".*page=2.*"))
    assert [r.get_attribute("data-device") for r in page.locator("#device-table tbody tr").all()] == rk[10:20]
    page.click("#device-table thead a:has-text('device')")        # sort by id, flipped to descending
    page.wait_for_url(re.compile(r".*order=desc.*"))
    assert "hardware=rk3399" in page.url and "page=" not in page.url
    assert [r.get_attribute("data-device") for r in page.locator("#device-table tbody tr").all()] == rk[::-1][:10]
    page.go_back()
    page.wait_for_url(re.compile(r".*page=2.*"))
    assert page.input_value("select[name=hardware]") == "rk3399"     # the filter came back with the URL
    dash.shot(page, "devices")
    dash.assert_clean(page)


def test_a_device_page_shows_the_figures_the_api_gives_for_each_version(dash: Dash) -> None:
    page = dash.page()
    device_id = "sim-rk-00003"

    def from_api() -> list[tuple[str, str, str, int, int]]:
        doc = dash.api(f"/v1/devices/{device_id}")
        return [(t["model"], t["version"], t["variant"], t["inferences"], t["errors"]) for t in doc["telemetry"]]

    def from_page() -> list[tuple[str, str, str, int, int]]:
        page.goto(f"{dash.server.http}/ui/devices/{device_id}")
        rows = []
        for r in page.locator("#telemetry tbody tr").all():
            cells = r.locator("td").all_inner_texts()
            rows.append((cells[0], cells[1], cells[2], int(cells[3]), int(cells[4])))
        return rows

    api, shown = stable(from_api, from_page)
    assert shown == api and api and api[0][3] > 0
    assert page.inner_text("#active-model") == "digits@1"
    assert dash.api(f"/v1/devices/{device_id}")["liveness"]["state"] in page.inner_text("#liveness")
    page.wait_for_selector(".plot .uplot")                            # the latency plot was drawn
    assert page.locator("#device-latency tbody tr").count() >= 1
    dash.shot(page, "device")
    dash.assert_clean(page)


def test_the_model_page_gives_latency_by_hardware_class_from_the_shared_buckets(dash: Dash) -> None:
    dash.stop_simulator()      # 37 devices reporting every second never hold a fleet-wide sum still
    page = dash.page()

    def from_api() -> dict[str, int]:
        out: dict[str, int] = {}
        for d in dash.api("/v1/devices")["devices"]:
            out[d["hardware_class"]] = out.get(d["hardware_class"], 0) + sum(
                t["inferences"] for t in d["telemetry"] if t["model"] == "digits" and t["version"] == "1")
        return out

    def from_page() -> dict[str, int]:
        page.goto(f"{dash.server.http}/ui/models/digits?window=1h")
        out: dict[str, int] = {}
        for r in page.locator("#latency-by-hardware tbody tr").all():
            key = r.get_attribute("data-key")        # "v1 rk3399 onnxruntime"
            hardware = key.split()[1]
            out[hardware] = out.get(hardware, 0) + int(r.locator("td[data-col=inferences]").inner_text())
        return out

    api, shown = stable(from_api, from_page)
    assert shown == api and set(shown) == {"x86-cpu", "rk3399"}   # everything the fleet ran is within the hour
    p95 = {r.get_attribute("data-key").split()[1]: float(r.locator("td[data-col=p95]").inner_text().split()[0])
           for r in page.locator("#latency-by-hardware tbody tr").all()}
    assert p95["rk3399"] > p95["x86-cpu"]                            # 30 ms devices against 5 ms ones
    assert page.locator("[data-serving='1']").inner_text() == str(FLEET_SIZE)
    page.wait_for_selector(".plot .uplot")
    dash.shot(page, "model")
    page.goto(dash.server.http + "/ui/")                                # the overview's table: the same sums
    overview = {r.get_attribute("data-key").split()[1]: int(r.locator("td[data-col=inferences]").inner_text())
                for r in page.locator("#latency-by-hardware tbody tr[data-key]").all()}
    assert overview == api
    dash.assert_clean(page)


def test_a_new_deployment_shows_up_live_and_the_operator_cancels_it_with_its_csrf_token(dash: Dash) -> None:
    page = dash.page()
    page.goto(dash.server.http + "/ui/deployments")
    page.wait_for_function("() => document.querySelector('[sse-connect]') && window.htmx")
    page.evaluate("() => { window.__same_page = true; }")
    time.sleep(1.5)   # the stream is open and has sent its first snapshot
    with dash.server.client() as fc:
        new = fc.deploy("digits", to=f"device:{AGENT}").id
    page.wait_for_selector(f'#deployments tr[data-deployment="{new}"]', timeout=15_000)
    assert page.evaluate("() => window.__same_page") is True          # no reload: the row came by SSE
    page.click(f'#deployments tr[data-deployment="{new}"] a')
    page.wait_for_url(re.compile(rf".*/ui/deployments/{new}$"))
    dash.shot(page, "deployment")
    if dash.api(f"/v1/deployments/{new}")["status"] == "active":
        page.click("#cancel")
        # Either the cancel took (back on the deployment's page), or the agent finished first
        # and the cancel was refused on its own page: then the deployment must have succeeded.
        page.wait_for_url(re.compile(rf".*/ui/deployments/{new}(/cancel)?$"))
        status = dash.api(f"/v1/deployments/{new}")["status"]
        assert status == "succeeded" if page.url.endswith("/cancel") else status == "cancelled", (page.url, status)
    dash.assert_clean(page)


def test_a_viewer_can_look_but_not_change(dash: Dash) -> None:
    out = subprocess.run([sys.executable, "-m", "fleetcast.sdk.console", "token", "create", "--viewer",
                          "--data", str(dash.server.data_dir), "--name", "e2e-viewer", "--json"],
                         capture_output=True, text=True, timeout=60, check=True)
    page = dash.page(token=json.loads(out.stdout)["token"])
    assert page.inner_text(".role") == "viewer"
    with dash.server.client() as fc:
        active = fc.deploy("digits", to="device:sim-cpu-00001").id
    page.goto(f"{dash.server.http}/ui/deployments/{active}")
    assert page.locator("#cancel").count() == 0
    csrf = page.get_attribute("form.logout input[name=csrf]", "value")
    status = page.evaluate("""async ([path, csrf]) => (await fetch(path, {method: "POST", body: new URLSearchParams({csrf}),
        redirect: "manual"})).status""", [f"/ui/deployments/{active}/cancel", csrf])
    assert status == 403
    assert dash.api(f"/v1/deployments/{active}")["status"] != "cancelled"
    dash.assert_clean(page)


def test_pages_read_without_javascript(dash: Dash) -> None:
    page = dash.page(javascript=False)       # the login form posts without script too
    assert int(page.inner_text("#total-devices")) == FLEET_SIZE
    page.goto(dash.server.http + "/ui/devices?hardware=x86-cpu&per=5")
    assert page.locator("#device-table tbody tr").count() == 5
    page.click("a[rel=next]")
    assert "page=2" in page.url
    page.goto(f"{dash.server.http}/ui/models/digits")
    assert page.locator("#latency-by-version tbody tr").count() >= 1   # the plot's figures as a table
    dash.shot(page, "devices-no-javascript")


def test_a_stopped_agent_turns_late_then_offline_on_its_page(dash: Dash) -> None:
    page = dash.page()
    page.goto(f"{dash.server.http}/ui/devices/{AGENT}")
    page.wait_for_function("() => window.htmx")
    page.evaluate("() => { window.__same_page = true; }")
    assert page.inner_text("#liveness .live") == "online"
    dash.agent.stop()
    stopped = time.monotonic()
    page.wait_for_function("() => document.querySelector('#liveness .live').textContent === 'late'",
                           timeout=(OFFLINE_AFTER_S + 15) * 1000)
    assert time.monotonic() - stopped >= INTERVAL_S * 0.5
    page.wait_for_function("() => document.querySelector('#liveness .live').textContent === 'offline'",
                           timeout=(OFFLINE_AFTER_S + 15) * 1000)
    assert page.evaluate("() => window.__same_page") is True
    assert dash.api(f"/v1/devices/{AGENT}")["liveness"]["state"] == "offline"
    dash.assert_clean(page)
