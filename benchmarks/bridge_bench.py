"""H5 bridge call latency and throughput beside the in-process and Unix-socket calls.

    .venv/bin/python benchmarks/bridge_bench.py --rounds 7

For each input, one child process serves the model the agent's way (installed in a
slot, loaded by the onnxruntime back end, a `Runtime`) behind both the agent's local
API (Unix socket) and the H5 bridge, as the agent process does. In the same run and
in alternating rounds, this process times `Runtime.infer` on its own copy of the model
(the in-process Python call), `InferenceClient.infer` over the socket, and Chromium
(Debian's, headless, cross-origin isolated so its timer has microsecond resolution)
times `fleetcast.ml.run` from the H5 page through the bridge over WebSocket and over
HTTP POST; a Python WebSocket client in this process sends the same frames to the
bridge, which isolates the bridge's own cost from the browser's, and a bare WebSocket
in the page (no SDK) sends one prebuilt frame, which isolates the browser's cost. Each cell is
"p50 / p95" in milliseconds per call over all rounds. Every figure is a per-call median (p50) over all rounds, plus p95;
throughput is sequential calls per second, and with 8 calls in flight on one
WebSocket. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleetcast.agent.bridge_frames import encode, tensor_doc  # noqa: E402
from fleetcast.agent.local_api import InferenceClient  # noqa: E402
from fleetcast.agent.runtime import Runtime  # noqa: E402
from tests.support.pages import StaticSite, launch_chromium  # noqa: E402
from tests.support.serving import loaded  # noqa: E402

PAGE_JS = """async ({n, shape, transport, inFlight}) => {
  const { connect } = await import('/sdk/js/src/index.js');
  window.clients ??= {};
  const fc = window.clients[transport] ??= connect({ transport });
  await fc.ml.ready();
  const count = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(count);
  for (let i = 0; i < count; i++) data[i] = (i % 17) / 17;
  const input = { input: { dtype: 'float32', shape, data } };
  if (inFlight > 1) {
    const start = performance.now();
    let next = 0;
    const worker = async () => { while (next++ < n) await fc.ml.run({ inputs: input }); };
    await Promise.all(Array.from({ length: inFlight }, worker));
    return [(performance.now() - start) / n];
  }
  const times = [];
  for (let i = 0; i < n; i++) {
    const start = performance.now();
    await fc.ml.run({ inputs: input });
    times.push(performance.now() - start);
  }
  return times;
}"""


BARE_WS_JS = """async ({n, shape}) => {
  // No SDK: one prebuilt frame on a bare WebSocket, to tell the browser's cost from ours.
  const { encodeFrame } = await import('/sdk/js/src/index.js');
  const config = window.__FLEETCAST_BRIDGE__;
  const count = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(count);
  const frame = encodeFrame({ id: 1, method: 'run', params: { inputs: { input: { dtype: 'float32', shape, buffer: 0 } } } }, [data]);
  const ws = new WebSocket(config.ws, ['fleetcast.v1', 'fleetcast.token.' + config.token]);
  ws.binaryType = 'arraybuffer';
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onclose = reject; });
  const times = [];
  for (let i = 0; i < n; i++) {
    const start = performance.now();
    ws.send(frame);
    await new Promise((resolve) => { ws.onmessage = resolve; });
    times.push(performance.now() - start);
  }
  ws.close();
  return times;
}"""


def gap224() -> onnx.ModelProto:
    """A 1x3x224x224 float32 input reduced to [1, 3]: the image goes in, little comes back."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["output"])]
    graph = helper.make_graph(nodes, "gap224", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def echo224() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 224, 224])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "echo224", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def serve(path: str, work: str, origin: str, ready: "multiprocessing.Queue[str]") -> None:
    """The agent side in its own process: Runtime + local API socket + bridge."""
    from fleetcast.agent.bridge import Bridge, BridgeConfig
    from fleetcast.agent.bridge_policy import parse_origins
    from fleetcast.agent.local_api import LocalApi
    from tests.support.serving import status_of

    from fleetcast.agent.telemetry import Recorder

    recorder = Recorder("bench-1")
    runtime = Runtime()
    runtime.swap(loaded(Path(path), Path(work), model=Path(path).stem, version="1", recorder=recorder))
    status = status_of(runtime)
    api = LocalApi(Path(work) / "agent.sock", runtime, status)
    api.start()
    bridge = Bridge(config=BridgeConfig(origins=parse_origins([origin])), runtime=runtime, status=status,
                    data_dir=Path(work), hardware_class="x86-cpu", recorder=recorder)
    bridge.start()
    ready.put("ready")
    time.sleep(3600)


def ws_per_call(bridge: dict, origin: str, frame: bytes, n: int) -> list[float]:
    """The bridge from a Python WebSocket client in this process: the bridge's own cost."""
    import asyncio

    import aiohttp

    async def go() -> list[float]:
        host = bridge["url"].removeprefix("http://")
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(bridge["ws"], origin=origin, headers={"Host": host},
                                          protocols=["fleetcast.v1", "fleetcast.token." + bridge["token"]]) as ws:
                times = []
                for _ in range(n):
                    start = time.perf_counter()
                    await ws.send_bytes(frame)
                    msg = await ws.receive()
                    assert b'"result"' in msg.data[:4096], msg.data[:200]
                    times.append((time.perf_counter() - start) * 1000.0)
                return times

    # Its own thread: Playwright's sync API holds this thread's event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


def per_call(fn, n: int) -> list[float]:  # noqa: ANN001
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure(name: str, path: Path, shape: list[int], *, browser, site: StaticSite, rounds: int,  # noqa: ANN001
            calls: int, work: Path) -> dict[str, object]:
    ctx = multiprocessing.get_context("spawn")
    ready: multiprocessing.Queue[str] = ctx.Queue()
    child = ctx.Process(target=serve, args=(str(path), str(work / "agent"), site.origin(), ready), daemon=True)
    child.start()
    try:
        ready.get(timeout=120)
        bridge = json.loads((work / "agent" / "bridge.json").read_text())
        context = browser.new_context()
        config = {k: bridge[k] for k in ("ws", "call", "token")}
        context.add_init_script(f"window.__FLEETCAST_BRIDGE__ = {json.dumps(config)};")
        page = context.new_page()
        page.goto(f"{site.origin()}/examples/h5/index.html")
        assert page.evaluate("crossOriginIsolated"), "the page is not cross-origin isolated: coarse timer"
        x = (np.arange(int(np.prod(shape))) % 17 / 17).astype(np.float32).reshape(shape)
        feed = {"input": x}
        runtime = Runtime()
        runtime.swap(loaded(path, work / "local", model=path.stem, version="1"))
        samples: dict[str, list[float]] = {"inproc": [], "socket": [], "pyws": [], "bare": [], "ws": [],
                                           "http": []}
        buffers: list = []
        frame = encode({"id": 1, "method": "run", "params": {"inputs": {"input": tensor_doc(x, buffers)}}}, buffers)
        with InferenceClient(work / "agent") as client:
            for _ in range(2):   # warm every path
                per_call(lambda: runtime.infer(feed), calls), per_call(lambda: client.infer(feed), calls)
                ws_per_call(bridge, site.origin(), frame, calls)
                page.evaluate(PAGE_JS, {"n": calls, "shape": shape, "transport": "websocket", "inFlight": 1})
                page.evaluate(PAGE_JS, {"n": calls, "shape": shape, "transport": "http", "inFlight": 1})
            pipelined = []
            for _ in range(rounds):
                samples["inproc"] += per_call(lambda: runtime.infer(feed), calls)
                samples["socket"] += per_call(lambda: client.infer(feed), calls)
                samples["pyws"] += ws_per_call(bridge, site.origin(), frame, calls)
                samples["bare"] += page.evaluate(BARE_WS_JS, {"n": calls, "shape": shape})
                samples["ws"] += page.evaluate(PAGE_JS, {"n": calls, "shape": shape, "transport": "websocket",
                                                         "inFlight": 1})
                samples["http"] += page.evaluate(PAGE_JS, {"n": calls, "shape": shape, "transport": "http",
                                                           "inFlight": 1})
                pipelined += page.evaluate(PAGE_JS, {"n": calls, "shape": shape, "transport": "websocket",
                                                     "inFlight": 8})
        context.close()
        row: dict[str, object] = {"input": name}
        for key, values in samples.items():
            row[key] = (p(values, 50), p(values, 95), 1000.0 / statistics.fmean(values))
        row["ws8"] = 1000.0 / statistics.median(pipelined)
        return row
    finally:
        child.kill()
        child.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=100, help="calls per path per round")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="fleetcast-bridge-bench-") as tmp, \
            StaticSite(isolated=True) as site, sync_playwright() as playwright:
        work = Path(tmp)
        onnx.save(gap224(), str(work / "gap224.onnx"))
        onnx.save(echo224(), str(work / "echo224.onnx"))
        cases = [("digits [1, 64]", ROOT / "examples" / "digits" / "digits.onnx", [1, 64]),
                 ("1x3x224x224 in, [1, 3] out", work / "gap224.onnx", [1, 3, 224, 224]),
                 ("1x3x224x224 in and out", work / "echo224.onnx", [1, 3, 224, 224])]
        browser = launch_chromium(playwright)
        print(f"rounds={args.rounds} calls={args.calls} chromium={browser.version}")
        print("| input | in-process Runtime.infer | Unix socket (InferenceClient) "
              "| bridge WS, Python client | bare WebSocket in the page, no SDK | bridge WS, Chromium page "
              "| bridge HTTP, Chromium page "
              "| bridge - socket p50: Python client, Chromium | calls/s: in-process, socket, WS Python, "
              "WS page, HTTP page, WS page 8 in flight |")
        print("|---|---|---|---|---|---|---|---|---|")
        for i, (name, path, shape) in enumerate(cases):
            r = measure(name, path, shape, browser=browser, site=site, rounds=args.rounds, calls=args.calls,
                        work=work / f"case{i}")
            cell = lambda k: f"{r[k][0]:.3f} / {r[k][1]:.3f}"  # noqa: E731
            rate = ", ".join(f"{r[k][2]:.0f}" for k in ("inproc", "socket", "pyws", "ws", "http"))
            print(f"| {name} | {cell('inproc')} | {cell('socket')} | {cell('pyws')} | {cell('bare')} | {cell('ws')} "
                  f"| {cell('http')} "
                  f"| {r['pyws'][0] - r['socket'][0]:+.3f}, {r['ws'][0] - r['socket'][0]:+.3f} "
                  f"| {rate}, {r['ws8']:.0f} |", flush=True)
        browser.close()


if __name__ == "__main__":
    main()
