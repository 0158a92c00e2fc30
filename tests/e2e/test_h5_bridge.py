"""The H5 bridge end to end: a page in Chromium calls the model a real agent serves.

One server, one agent with the bridge, one static site and one Chromium for the module;
each test makes sure the model it needs is the one served. Chromium resolves the
lookalike `127.0.0.1.evil.test` and the rebinding name `rebind.test` to 127.0.0.1.
Screenshots go to `test-artifacts/h5/` (gitignored).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fleetcast.agent.bridge_images import preprocess
from tests.support.deployments import deploy_and_install, inferences_of, push, wait_serving
from tests.support.pages import REPO, StaticSite, launch_chromium
from tests.support.processes import AgentProcess, ServerProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

DIGITS = REPO / "examples" / "digits" / "digits.onnx"
ARTIFACTS = REPO / "test-artifacts" / "h5"
LOOKALIKE = "127.0.0.1.evil.test"
REBIND = "rebind.test"
OTHER = "other.test"
MAX_INPUT_BYTES = 4 * 1024 * 1024
PAGE = "/examples/h5/index.html"

# In the page: run one tensor through the SDK and hand back the answer's bytes as base64.
RUN_TENSOR_JS = """async ({b64, dtype, shape, transport, topOnly}) => {
  const { connect } = await import('/sdk/js/src/index.js');
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new Float32Array(bytes.buffer);
  const options = {};
  if (transport) options.transport = transport;
  if (topOnly !== undefined) options.topOnly = topOnly;
  const fc = connect(options);
  try {
    const r = await fc.ml.run({ inputs: { input: { dtype, shape, data } } });
    const out = {};
    for (const [name, t] of Object.entries(r.outputs)) {
      const u8 = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      let s = '';
      for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode(...u8.subarray(i, i + 0x8000));
      out[name] = { dtype: t.dtype, shape: t.shape, b64: btoa(s) };
    }
    return { ok: true, outputs: out, version: r.version, model: r.model, latencyMs: r.latencyMs };
  } catch (e) {
    return { ok: false, code: e.code, alias: e.alias, message: e.message };
  } finally {
    fc.close();
  }
}"""


def echo_model() -> onnx.ModelProto:
    """Identity on a 1x3x224x224 float32 tensor: what goes in must come back bit for bit."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 224, 224])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "echo", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def digits_copy(path: Path, tag: str) -> Path:
    """The digits model with a different doc string: new bytes, same answers."""
    model = onnx.load(str(DIGITS))
    model.doc_string = f"fleetcast h5 test copy {tag}"
    onnx.save(model, str(path))
    return path


@dataclass
class H5:
    server: ServerProcess
    agent: AgentProcess
    site: StaticSite
    browser: Any
    tmp: Path

    @property
    def bridge(self) -> dict[str, Any]:
        return json.loads((self.agent.data_dir / "bridge.json").read_text())

    def serve(self, name: str, path: Path) -> str:
        """Pushes `path` as a new version of `name`, installs it, returns the version."""
        version = push(self.server, path, name=name).version
        deploy_and_install(self.server, [self.agent], name, version)
        wait_serving(self.agent, name, version)
        return version

    def ensure(self, name: str, path: Path) -> str:
        status = self.agent.status()
        return status["version"] if status["model"] == name else self.serve(name, path)

    def page(self, *, host: str = "127.0.0.1", inject: bool = True, path: str = PAGE) -> Any:
        """A fresh context's page from `host`; the app's token injected into the top frame only."""
        context = self.browser.new_context()
        if inject:
            config = {k: self.bridge[k] for k in ("ws", "call", "token")}
            context.add_init_script(f"if (window.top === window) window.__FLEETCAST_BRIDGE__ = {json.dumps(config)};")
        page = context.new_page()
        page.goto(f"http://{host}:{self.site.port}{path}")
        return page


@pytest.fixture(scope="module")
def h5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[H5]:
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("h5")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with StaticSite() as site:
        server = ServerProcess(tmp / "server")
        agent = None
        try:
            server.start()
            agent = AgentProcess(
                tmp / "phone", server=server, device_id="phone-1", hardware="x86-cpu",
                trust_root=server.trust_root, enroll_token=server.enroll_token,
                extra_args=["--bridge-allow-origin", f"{site.origin()} max-input-bytes={MAX_INPUT_BYTES}",
                            "--bridge-allow-origin", f"{site.origin('localhost')} methods=run rate=2"])
            agent.start()
            wait_for(lambda: (agent.data_dir / "bridge.json").exists(), timeout_s=30,
                     what="bridge.json", context=agent.log_tail)
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright, [
                    f"--host-resolver-rules=MAP {LOOKALIKE} 127.0.0.1, MAP {REBIND} 127.0.0.1, MAP {OTHER} 127.0.0.1"])
                env = H5(server=server, agent=agent, site=site, browser=browser, tmp=tmp)
                env.serve("digits", digits_copy(tmp / "digits-v1.onnx", "v1"))
                try:
                    yield env
                finally:
                    browser.close()
        finally:
            if agent is not None:
                agent.stop()
            server.stop()


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def array_of(doc: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(doc["b64"]), dtype=doc["dtype"]).reshape(doc["shape"])


def run_in_page(page: Any, x: np.ndarray, **options: Any) -> dict[str, Any]:
    return page.evaluate(RUN_TENSOR_JS, {"b64": b64(x.astype(np.float32)), "dtype": "float32",
                                         "shape": list(x.shape), **options})


def wait_ready(page: Any) -> None:
    page.wait_for_selector("#status[data-ready='true'], #status[data-code]", timeout=20_000)


def status_code(page: Any) -> str:
    page.wait_for_selector("#status[data-code]", timeout=20_000)
    return str(page.get_attribute("#status", "data-code"))


# ---- serving ----------------------------------------------------------------------


def test_page_drawing_a_digit_gets_outputs_bit_identical_to_the_inference_client(h5: H5) -> None:
    h5.ensure("digits", DIGITS)
    page = h5.page()
    wait_ready(page)
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + 96, box["y"] + 30)
    page.mouse.down()
    for y in range(30, 170, 10):
        page.mouse.move(box["x"] + 96, box["y"] + y)
    page.mouse.up()
    page.click("#recognize")
    page.wait_for_selector("#answer[data-digit]", timeout=20_000)
    page.screenshot(path=str(ARTIFACTS / "digit-drawn.png"))
    got = page.evaluate("""() => {
      const p = window.lastResult.outputs.probabilities;
      return { data: Array.from(p.data), shape: p.shape, latency: document.getElementById('latency').textContent };
    }""")
    pixels = page.evaluate("""() => {
      const d = document.getElementById('pad').getContext('2d').getImageData(0, 0, 192, 192).data;
      let s = ''; for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode(...d.subarray(i, i + 0x8000));
      return btoa(s);
    }""")
    rgba = np.frombuffer(base64.b64decode(pixels), dtype=np.uint8).reshape(192, 192, 4)
    x = preprocess(rgba, {"channels": "gray", "resize": [8, 8], "scale": 16 / 255, "layout": "NCHW",
                          "dtype": "float32", "reshape": [1, 64]})
    assert x.max() > 0, "the drawn stroke did not reach the model's input"
    want = h5.agent.infer({"input": x})["probabilities"]
    assert np.array_equal(np.asarray(got["data"], dtype=np.float32).reshape(got["shape"]), want)
    assert "ms" in got["latency"]


def test_png_blob_input_is_decoded_by_the_page_and_answers_like_its_image_data(h5: H5) -> None:
    h5.ensure("digits", DIGITS)
    page = h5.page()
    wait_ready(page)
    answer = page.evaluate("""async () => {
      const { connect } = await import('/sdk/js/src/index.js');
      const canvas = document.createElement('canvas');
      canvas.width = canvas.height = 64;
      const c = canvas.getContext('2d');
      c.fillStyle = '#000'; c.fillRect(0, 0, 64, 64);
      c.fillStyle = '#fff'; c.fillRect(28, 6, 8, 52);
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
      const preprocess = { channels: 'gray', resize: [8, 8], scale: 16 / 255, reshape: [1, 64] };
      const fc = connect();
      const fromBlob = await fc.ml.run({ inputs: { input: { image: blob, preprocess } } });
      const fromPixels = await fc.ml.run({ inputs: { input: { image: c.getImageData(0, 0, 64, 64), preprocess } } });
      return { blob: Array.from(fromBlob.outputs.probabilities.data),
               pixels: Array.from(fromPixels.outputs.probabilities.data), type: blob.type };
    }""")
    assert answer["type"] == "image/png"
    assert answer["blob"] == answer["pixels"] and len(answer["blob"]) == 10
    assert int(np.argmax(answer["blob"])) == 1, answer


@pytest.mark.parametrize("transport", ["websocket", "http"])
def test_tensor_run_from_page_is_bit_identical_to_the_inference_client(h5: H5, transport: str) -> None:
    version = h5.ensure("digits", DIGITS)
    with np.load(REPO / "examples" / "digits" / "test.npz") as npz:
        x = npz["x"][:5].astype(np.float32)
    page = h5.page()
    before = inferences_of(h5.server, h5.agent.device_id, "digits", version)
    answer = run_in_page(page, x, transport=transport)
    assert answer["ok"], answer
    want = h5.agent.infer({"input": x})["probabilities"]
    got = array_of(answer["outputs"]["probabilities"])
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert answer["model"] == "digits" and answer["latencyMs"] > 0
    # The page's call and ours reach the server's telemetry for the same model version.
    wait_for(lambda: inferences_of(h5.server, h5.agent.device_id, "digits", version) >= before + 2,
             timeout_s=30, what="the server to count the bridge call", context=h5.agent.log_tail)


def test_224x224_float32_tensor_round_trips_exactly(h5: H5) -> None:
    path = h5.tmp / "echo224.onnx"
    onnx.save(echo_model(), str(path))
    h5.ensure("echo224", path)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    x.flat[:4] = [np.float32(1e-45), -0.0, np.finfo(np.float32).max, np.finfo(np.float32).tiny]
    answer = run_in_page(h5.page(), x)
    assert answer["ok"], answer
    got = array_of(answer["outputs"]["output"])
    assert got.shape == x.shape and got.tobytes() == x.tobytes()


def test_model_updated_fires_after_a_new_version_is_activated_and_the_next_run_reports_it(h5: H5) -> None:
    before = h5.ensure("digits", DIGITS)
    page = h5.page()
    wait_ready(page)
    page.evaluate("""async () => {
      const { connect } = await import('/sdk/js/src/index.js');
      window.events = [];
      window.fc2 = connect();
      await window.fc2.ml.ready();          // the WebSocket is open before the deployment
      window.fc2.ml.on('modelUpdated', (info) => window.events.push(info));
    }""")
    version = h5.serve("digits", digits_copy(h5.tmp / "digits-next.onnx", "next"))
    assert version != before
    page.wait_for_function("window.events.length > 0", timeout=30_000)
    event = page.evaluate("window.events[0]")
    assert (event["model"], event["version"]) == ("digits", version), event
    with np.load(REPO / "examples" / "digits" / "test.npz") as npz:
        x = npz["x"][:1].astype(np.float32)
    answer = run_in_page(page, x)
    assert answer["ok"] and answer["version"] == version, answer
    page.screenshot(path=str(ARTIFACTS / "model-updated.png"))


def test_oversized_input_gets_resource_exhausted_and_the_agent_keeps_serving(h5: H5) -> None:
    h5.ensure("digits", DIGITS)
    page = h5.page()
    big = np.zeros((1, MAX_INPUT_BYTES // 4 + 1024), dtype=np.float32)
    for transport in ("websocket", "http"):
        answer = run_in_page(page, big, transport=transport)
        assert (answer["ok"], answer.get("code")) == (False, "RESOURCE_EXHAUSTED"), (transport, answer)
        assert answer["alias"] == 3
    small = np.zeros((1, 64), dtype=np.float32)
    assert run_in_page(page, small)["ok"]
    assert h5.agent.status()["model"] == "digits"


# ---- refusals ---------------------------------------------------------------------

# In the page: one info() call with these connect() options; the outcome, never a throw.
INFO_JS = """async (options) => {
  const { connect } = await import('/sdk/js/src/index.js');
  try { await connect(options).ml.info(); return { ok: true }; }
  catch (e) { return { ok: false, code: e.code, alias: e.alias, message: e.message }; }
}"""


@pytest.mark.parametrize("transport", ["websocket", "http"])
def test_page_from_a_disallowed_origin_is_refused_with_permission_denied(h5: H5, transport: str) -> None:
    h5.ensure("digits", DIGITS)
    page = h5.page(host=OTHER)
    answer = run_in_page(page, np.zeros((1, 64), np.float32), transport=transport)
    assert (answer["ok"], answer["code"], answer["alias"]) == (False, "PERMISSION_DENIED", 4), answer
    assert "origin" in answer["message"]


def test_lookalike_host_origin_is_refused_with_permission_denied(h5: H5) -> None:
    page = h5.page(host=LOOKALIKE)
    assert status_code(page) == "PERMISSION_DENIED"
    page.screenshot(path=str(ARTIFACTS / "lookalike-refused.png"))
    answer = run_in_page(page, np.zeros((1, 64), np.float32), transport="http")
    assert answer["code"] == "PERMISSION_DENIED" and LOOKALIKE in answer["message"], answer


def test_request_with_a_wrong_host_is_refused_with_permission_denied(h5: H5) -> None:
    # A rebound name reaches 127.0.0.1 but its Host header is not the bridge's address.
    config = h5.bridge
    for transport in ("websocket", "http"):
        answer = h5.page().evaluate(INFO_JS, {
            "transport": transport, "token": config["token"],
            "ws": config["ws"].replace("127.0.0.1", REBIND), "call": config["call"].replace("127.0.0.1", REBIND)})
        assert (answer["ok"], answer["code"]) == (False, "PERMISSION_DENIED"), (transport, answer)
        assert "Host" in answer["message"]


def test_page_without_the_token_is_refused_with_permission_denied(h5: H5) -> None:
    page = h5.page(inject=False)
    assert status_code(page) == "PERMISSION_DENIED"
    config = h5.bridge
    for token in (None, "not-the-token"):
        for transport in ("websocket", "http"):
            answer = page.evaluate(INFO_JS, {"ws": config["ws"], "call": config["call"], "transport": transport,
                                             **({"token": token} if token else {})})
            assert (answer["ok"], answer["code"]) == (False, "PERMISSION_DENIED"), (transport, token, answer)
            assert "token" in answer["message"]


def test_iframe_is_refused_with_permission_denied(h5: H5) -> None:
    page = h5.page()
    wait_ready(page)
    config = h5.bridge
    frames = {}
    for name, host in (("same-origin", "127.0.0.1"), ("cross-origin", LOOKALIKE)):
        page.evaluate("""(src) => new Promise((resolve) => {
          const f = document.createElement('iframe'); f.onload = resolve; f.src = src; document.body.appendChild(f);
        })""", f"http://{host}:{h5.site.port}{PAGE}?frame={name}")
        frames[name] = next(f for f in page.frames if f.url.endswith(f"frame={name}"))
    page.screenshot(path=str(ARTIFACTS / "iframes.png"))
    # The SDK in a frame refuses before sending anything.
    sdk = frames["same-origin"].evaluate(INFO_JS, {"transport": "http", "call": config["call"]})
    assert (sdk["code"], "top-level" in sdk["message"]) == ("PERMISSION_DENIED", True), sdk
    # A frame that bypasses the SDK has no token: the app injects it into the top frame only.
    bypass = frames["same-origin"].evaluate(INFO_JS, {"transport": "http", "call": config["call"], "topOnly": False})
    assert (bypass["code"], "token" in bypass["message"]) == ("PERMISSION_DENIED", True), bypass
    # A frame of another origin is refused by the bridge even when handed the token.
    cross = frames["cross-origin"].evaluate(INFO_JS, {"transport": "http", "call": config["call"],
                                                      "token": config["token"], "topOnly": False})
    assert (cross["code"], "origin" in cross["message"]) == ("PERMISSION_DENIED", True), cross
