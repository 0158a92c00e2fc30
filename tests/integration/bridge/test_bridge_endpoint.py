"""The bridge endpoint over real HTTP and WebSocket on 127.0.0.1, serving a real model.

Requests are made by hand here (a browser cannot send a wrong Host or omit Origin); the
browser's view is in tests/e2e/test_h5_bridge.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from fleetcast.agent.bridge import Bridge, BridgeConfig
from fleetcast.agent.bridge_frames import decode, encode, tensor_doc, tensor_from
from fleetcast.agent.bridge_images import preprocess
from fleetcast.agent.bridge_policy import parse_origins
from fleetcast.agent.runtime import Runtime
from fleetcast.agent.telemetry import Recorder
from tests.support.serving import loaded, status_of

REPO = Path(__file__).resolve().parents[3]
DIGITS = REPO / "examples" / "digits" / "digits.onnx"
APP = "http://127.0.0.1:8080"
PARTNER = "https://partner.example"
CAP = 64 * 1024


class Env:
    def __init__(self, tmp: Path) -> None:
        self.state = "idle"
        self.runtime = Runtime()
        self.recorder = Recorder("dev-1")
        self.model = loaded(DIGITS, tmp / "agent", model="digits", version="1", recorder=self.recorder)
        self.runtime.swap(self.model)
        self.bridge = Bridge(
            config=BridgeConfig(origins=parse_origins([APP, f"{PARTNER} methods=run rate=3 max-input-bytes={CAP}"])),
            runtime=self.runtime, status=status_of(self.runtime, lambda: self.state), data_dir=tmp / "agent",
            hardware_class="x86-cpu", recorder=self.recorder)
        self.bridge.start()
        self.doc = json.loads((tmp / "agent" / "bridge.json").read_text())

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.bridge.port}"

    def post(self, body: bytes, *, host: str | None = None, origin: str | None = APP,
             token: str | None = "", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.bridge.port, timeout=30)
        h = {"Host": host or self.host, "Content-Type": "application/octet-stream", **(headers or {})}
        if origin is not None:
            h["Origin"] = origin
        token = self.doc["token"] if token == "" else token
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        conn.request("POST", "/v1/call", body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        headers_out = {k.lower(): v for k, v in r.getheaders()}
        if headers_out.get("content-type", "").startswith("application/json"):
            return r.status, headers_out, json.loads(data)
        return r.status, headers_out, decode(data, max_bytes=1 << 30)

    def call(self, method: str, params: dict[str, Any] | None = None, buffers: list[Any] = (), **kw: Any) -> Any:  # type: ignore[assignment]
        status, _, frame = self.post(encode({"id": 7, "method": method, "params": params or {}}, list(buffers)), **kw)
        assert status == 200, frame
        return frame


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.bridge.stop()


def digits_input(rows: int = 3) -> np.ndarray:
    with np.load(REPO / "examples" / "digits" / "test.npz") as npz:
        return npz["x"][:rows].astype(np.float32)


def run_frame(x: np.ndarray, **params: Any) -> bytes:
    buffers: list[Any] = []
    return encode({"id": 1, "method": "run", "params": {"inputs": {"input": tensor_doc(x, buffers)}, **params}},
                  buffers)


def test_bridge_json_is_0600_names_loopback_and_goes_away_on_stop(tmp_path: Path) -> None:
    e = Env(tmp_path)
    path = tmp_path / "agent" / "bridge.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert e.doc["url"] == f"http://127.0.0.1:{e.bridge.port}" and len(e.doc["token"]) == 64
    assert e.doc["origins"] == [APP, PARTNER]
    e.bridge.stop()
    assert not path.exists()


def test_run_over_http_answers_what_the_runtime_answers_bit_for_bit_and_is_counted(env: Env) -> None:
    x = digits_input()
    status, headers, frame = env.post(run_frame(x))
    assert status == 200 and headers["access-control-allow-origin"] == APP
    result = frame.header["result"]
    got = tensor_from(result["outputs"]["probabilities"], frame, "out")
    assert np.array_equal(got, env.runtime.infer({"input": x})["probabilities"])
    assert (result["model"], result["version"]) == ("digits", "1") and result["latencyMs"] > 0
    # The bridge call is counted under its own label beside ours, for the same model version.
    env.post(run_frame(x[:1].reshape(1, 8, 8)))            # one that fails
    batch = env.recorder.close_window()
    stats = {s.caller: (s.inferences, s.errors, s.model, s.version) for s in batch.stats}
    assert stats == {"bridge": (2, 1, "digits", "1"), "": (1, 0, "digits", "1")}


def test_image_input_is_preprocessed_by_the_agent(env: Env) -> None:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(40, 30, 4), dtype=np.uint8)
    spec = {"channels": "gray", "resize": [8, 8], "scale": 16 / 255, "dtype": "float32", "reshape": [1, 64]}
    buffers: list[Any] = []
    body = encode({"id": 2, "method": "run", "params": {"inputs": {"input": {
        "image": tensor_doc(rgba, buffers), "preprocess": spec}}}}, buffers)
    _, _, frame = env.post(body)
    got = tensor_from(frame.header["result"]["outputs"]["probabilities"], frame, "out")
    assert np.array_equal(got, env.runtime.infer({"input": preprocess(rgba, spec)})["probabilities"])


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1.evil.test:{port}", "127.0.0.1:1", "evil.test"])
def test_wrong_host_header_is_refused_with_permission_denied(env: Env, host: str) -> None:
    status, _, doc = env.post(run_frame(digits_input()), host=host.format(port=env.bridge.port))
    assert (status, doc["error"]["code"]) == (403, "PERMISSION_DENIED")
    assert "Host" in doc["error"]["message"]


@pytest.mark.parametrize("origin", [None, "null", "http://127.0.0.1:8081", "http://127.0.0.1:8080.evil.test",
                                    "https://127.0.0.1:8080", "https://evil.partner.example",
                                    "https://partner.example.evil.test", "http://partner.example"])
def test_origin_not_on_the_list_exactly_is_refused_with_permission_denied(env: Env, origin: str | None) -> None:
    status, headers, doc = env.post(run_frame(digits_input()), origin=origin)
    assert (status, doc["error"]["code"], doc["error"]["retryable"]) == (403, "PERMISSION_DENIED", False)
    assert "origin" in doc["error"]["message"]
    assert "result" not in doc


@pytest.mark.parametrize("token", [None, "0" * 64, "x"])
def test_missing_or_wrong_token_is_refused_with_permission_denied(env: Env, token: str | None) -> None:
    status, _, doc = env.post(run_frame(digits_input()), token=token)
    assert (status, doc["error"]["code"]) == (403, "PERMISSION_DENIED")
    assert "token" in doc["error"]["message"]


def ws_upgrade(env: Env, *, origin: str, token: str | None, host: str | None = None) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        protocols = ["fleetcast.v1"] + ([f"fleetcast.token.{token}"] if token else [])
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(f"http://127.0.0.1:{env.bridge.port}/v1/ws", origin=origin,
                                              protocols=protocols, headers={"Host": host or env.host}) as ws:
                    await ws.send_bytes(run_frame(digits_input(1)))
                    msg = await ws.receive(timeout=20)
                    return 101, decode(msg.data, max_bytes=1 << 30)
            except aiohttp.WSServerHandshakeError as e:
                return e.status, None

    return asyncio.run(go())


def test_websocket_upgrade_checks_host_origin_and_token(env: Env) -> None:
    token = env.doc["token"]
    code, frame = ws_upgrade(env, origin=APP, token=token)
    assert code == 101 and "probabilities" in frame.header["result"]["outputs"]
    assert ws_upgrade(env, origin="http://127.0.0.1:9999", token=token)[0] == 403
    assert ws_upgrade(env, origin=APP, token=None)[0] == 403
    assert ws_upgrade(env, origin=APP, token=token, host="rebind.test:1")[0] == 403


def test_methods_off_the_origin_list_are_refused_and_unknown_ones_not_found(env: Env) -> None:
    denied = env.call("listModels", origin=PARTNER).header["error"]
    assert denied["code"] == "PERMISSION_DENIED" and "listModels" in denied["message"]
    assert env.call("teleport", origin=APP).header["error"]["code"] == "NOT_FOUND"
    hello = env.call("hello", origin=PARTNER).header["result"]
    assert hello["methods"] == ["hello", "run"]
    assert env.call("listModels").header["result"]["models"][0]["model"] == "digits"


def test_rate_limit_and_size_cap_answer_resource_exhausted_and_serving_goes_on(env: Env) -> None:
    codes = [env.call("hello", origin=PARTNER).header.get("error", {}).get("code") for _ in range(8)]
    assert "RESOURCE_EXHAUSTED" in codes and codes[0] is None
    big = run_frame(np.zeros((1, CAP // 4 + 16), np.float32))
    status, _, doc = env.post(big, origin=PARTNER)
    assert (status, doc["error"]["code"], doc["error"]["retryable"]) == (429, "RESOURCE_EXHAUSTED", True)
    status, _, frame = env.post(run_frame(digits_input(1)))
    assert status == 200 and "result" in frame.header


def test_malformed_frames_are_invalid_argument_and_the_bridge_keeps_serving(env: Env) -> None:
    for body in (b"", b"GET / HTTP/1.1", b"FCB\x02" + bytes(8), encode({"id": 1, "method": "run",
                                                                         "params": {"inputs": {"input": {
                                                                             "dtype": "float32", "shape": [1, 64],
                                                                             "buffer": 0}}}})):
        status, _, frame = env.post(body)
        doc = frame["error"] if isinstance(frame, dict) else frame.header["error"]
        assert doc["code"] == "INVALID_ARGUMENT", doc
    _, _, frame = env.post(run_frame(digits_input(1).reshape(1, 8, 8)))
    assert frame.header["error"]["code"] == "INFERENCE_ERROR"
    assert "result" in env.post(run_frame(digits_input(1)))[2].header


def test_nothing_served_is_unavailable_or_model_loading_and_other_models_not_found(env: Env) -> None:
    assert env.call("info", {"model": "faces"}).header["error"]["code"] == "NOT_FOUND"
    env.runtime.swap(None)
    assert env.call("info").header["error"]["code"] == "UNAVAILABLE"
    env.state = "download"
    error = env.post(run_frame(digits_input(1)))[2].header["error"]
    assert (error["code"], error["retryable"]) == ("MODEL_LOADING", True)


def test_preflight_lets_the_page_read_a_refusal_but_never_an_answer(env: Env) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", env.bridge.port, timeout=10)
    conn.request("OPTIONS", "/v1/call", headers={"Host": env.host, "Origin": "https://evil.test",
                                                  "Access-Control-Request-Method": "POST"})
    r = conn.getresponse()
    r.read()
    assert r.status == 204 and r.getheader("Access-Control-Allow-Origin") == "https://evil.test"
    status, headers, doc = env.post(run_frame(digits_input(1)), origin="https://evil.test")
    assert status == 403 and "result" not in doc and doc["error"]["code"] == "PERMISSION_DENIED"


def test_a_configured_port_in_use_is_a_fatal_error_naming_it(tmp_path: Path) -> None:
    import socket

    from fleetcast.agent.errors import FatalError

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    runtime = Runtime()
    bridge = Bridge(config=BridgeConfig(origins=parse_origins([APP]), port=port), runtime=runtime,
                    status=status_of(runtime), data_dir=tmp_path, hardware_class="x86-cpu", recorder=Recorder("d"))
    try:
        with pytest.raises(FatalError, match=f"127.0.0.1:{port}"):
            bridge.start()
        assert not (tmp_path / "bridge.json").exists()
    finally:
        bridge.stop()
        taken.close()


def slow_model(path: Path) -> Path:
    """[1, 64] in, [1, 1] out, through a 1024x1024 MatMul: 2 GFLOP, tens of ms at least."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1])
    nodes = [helper.make_node("Tile", ["input", "reps"], ["row"]),             # [1, 1024]
             helper.make_node("Expand", ["row", "square"], ["big"]),           # [1024, 1024]
             helper.make_node("MatMul", ["big", "big"], ["product"]),
             helper.make_node("ReduceSum", ["product"], ["output"], keepdims=1)]
    constants = [helper.make_tensor("reps", TensorProto.INT64, [2], [1, 16]),
                 helper.make_tensor("square", TensorProto.INT64, [2], [1024, 1024])]
    graph = helper.make_graph(nodes, "slow", [x], [y], initializer=constants)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_a_call_past_its_timeout_is_timeout_and_the_next_one_is_served(env: Env, tmp_path: Path) -> None:
    env.runtime.swap(loaded(slow_model(tmp_path / "slow.onnx"), tmp_path / "slow", model="slow", version="1",
                            slot="b"))
    error = env.post(run_frame(digits_input(1), timeoutMs=1))[2].header["error"]
    assert (error["code"], error["retryable"]) == ("TIMEOUT", True), error
    assert env.post(run_frame(digits_input(1), timeoutMs=0))[2].header["error"]["code"] == "INVALID_ARGUMENT"
    assert "result" in env.post(run_frame(digits_input(1), timeoutMs=60_000))[2].header
