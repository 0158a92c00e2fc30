"""`make demo-h5`: the H5 digits page calling the on-device model through the bridge.

Starts a Fleetcast server and one agent with the H5 bridge (under `demo-data/h5/`,
replaced on each run), pushes and deploys the digits model, serves this folder and the
JS package on 127.0.0.1, and prints the page's URL. The bridge's address and
per-session token ride in the URL fragment, which never leaves the browser; inside an
app, the app injects them instead. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from fleetcast.sdk import Client

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "demo-data" / "h5"
MODEL = ROOT / "examples" / "digits" / "digits.onnx"
START_TIMEOUT_S = 60.0


class PageHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript"}

    def do_GET(self) -> None:  # noqa: N802
        if not self.path.startswith(("/examples/h5/", "/sdk/js/")) or ".." in self.path:
            self.send_error(404)
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def fleetcast(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleetcast.sdk.console", *args]


def wait_json(path: Path, process: subprocess.Popen[bytes], name: str) -> dict:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{name} exited with {process.returncode}; see {WORK / 'logs'}")
        try:
            doc = json.loads(path.read_text())
            if doc.get("pid") == process.pid:
                return doc
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    sys.exit(f"{name} did not start within {START_TIMEOUT_S:.0f} s; see {WORK / 'logs'}")


def main() -> int:
    parser = argparse.ArgumentParser(description="Serve the H5 digits demo.")
    parser.add_argument("--port", type=int, default=8480, help="port of the page (default 8480)")
    parser.add_argument("--exit-after-s", type=float, default=0, help="stop after this long (default: Ctrl-C)")
    args = parser.parse_args()
    import shutil

    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "logs").mkdir(parents=True)
    site = ThreadingHTTPServer(("127.0.0.1", args.port), functools.partial(PageHandler, directory=str(ROOT)))
    origin = f"http://127.0.0.1:{site.server_address[1]}"
    threading.Thread(target=site.serve_forever, daemon=True).start()
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (WORK / "logs" / f"{name}.log").open("wb") as log:
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        processes.append(p)
        return p

    try:
        server = start("server", fleetcast("server", "--data", str(WORK / "server"),
                                           "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"))
        addresses = wait_json(WORK / "server" / "server.json", server, "server")
        agent = start("agent", fleetcast(
            "agent", "--server", addresses["grpc"], "--data", str(WORK / "phone"), "--device-id", "phone-h5",
            "--hardware", "phone-android", "--trust-root", str(WORK / "server" / "trust-root.json"),
            "--enroll-token-file", str(WORK / "server" / "enroll-token"), "--trial-s", "1",
            "--bridge-allow-origin", origin))
        wait_json(WORK / "phone" / "agent.json", agent, "agent")
        bridge = wait_json(WORK / "phone" / "bridge.json", agent, "agent bridge")
        client = Client.from_data_dir(WORK / "server")
        version = client.push_model(MODEL, name="digits").version
        deployment = client.wait_deployment(client.deploy("digits", version=version, to="all").id, timeout_s=120)
        if any(d.outcome != "installed" for d in deployment.devices):
            print(f"the deployment did not install; logs in {WORK / 'logs'}")
            return 1
        fragment = urllib.parse.urlencode({k: bridge[k] for k in ("ws", "call", "token")})
        print(f"digits@{version} serves on the agent; its bridge listens on {bridge['url']}")
        print(f"open {origin}/examples/h5/index.html#{fragment}")
        print("Ctrl-C stops the demo")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait(args.exit_after_s or None)
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        for p in reversed(processes):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        site.shutdown()
        print("stopped everything the demo started")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
