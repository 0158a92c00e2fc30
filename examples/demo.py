"""`make demo`: the main job on the embedded default, start to finish.

Starts a Fleetcast server (SQLite, local blobs, no broker), three agents with
different hardware classes, pushes the digits classifier that ships in
`examples/digits/`, deploys it to all, waits until every agent serves it, runs a few
inferences through each agent's local API, prints the fleet table, and stops
everything it started. Everything lives under `demo-data/` (replaced on each run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleetcast.agent.local_api import InferenceClient
from fleetcast.sdk import Client

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "demo-data"
MODEL = ROOT / "examples" / "digits" / "digits.onnx"
SAMPLES = ROOT / "examples" / "digits" / "test.npz"
DEVICES = (("cam-x86-01", "x86-cpu"), ("board-rk3399-07", "rk3399"), ("phone-android-3", "phone-android"))
START_TIMEOUT_S = 60.0
DEPLOY_TIMEOUT_S = 120.0


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


def fleetcast(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleetcast.sdk.console", *args]


def start(name: str, argv: list[str]) -> Started:
    log = WORK / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return Started(name, process, log)


def wait_for_json(path: Path, started: Started) -> dict:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if started.process.poll() is not None:
            sys.exit(f"{started.name} exited with {started.process.returncode}; see {started.log}")
        if path.exists():
            doc = json.loads(path.read_text())
            if doc.get("pid") == started.process.pid:
                return doc
        time.sleep(0.1)
    sys.exit(f"{started.name} did not start within {START_TIMEOUT_S:.0f} s; see {started.log}")


def stop(processes: list[Started]) -> None:
    for started in processes:
        if started.process.poll() is None:
            started.process.send_signal(signal.SIGTERM)
    for started in processes:
        try:
            started.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            started.process.kill()


def run_inferences(agent_dir: Path, samples: np.lib.npyio.NpzFile, count: int) -> tuple[int, int]:
    client = InferenceClient(agent_dir)
    correct = 0
    for i in range(count):
        outputs = client.infer({"input": samples["x"][i : i + 1]})
        probabilities = next(iter(outputs.values()))
        correct += int(np.argmax(probabilities) == samples["y"][i])
    return correct, count


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)))


def milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    server_dir = WORK / "server"
    processes: list[Started] = []
    try:
        print("== starting the server (SQLite, local blobs, gRPC push, no broker)")
        server = start("server", fleetcast("server", "--data", str(server_dir),
                                           "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"))
        processes.append(server)
        addresses = wait_for_json(server_dir / "server.json", server)
        print(f"   REST {addresses['http']}   gRPC {addresses['grpc']}")

        print("== starting three agents")
        agents: dict[str, Path] = {}
        for device_id, hardware in DEVICES:
            agent_dir = WORK / "agents" / device_id
            agents[device_id] = agent_dir
            processes.append(start(device_id, fleetcast(
                "agent", "--server", addresses["grpc"], "--data", str(agent_dir),
                "--device-id", device_id, "--hardware", hardware,
                "--trust-root", str(server_dir / "trust-root.json"),   # server-ca.pem lies beside it
                "--enroll-token-file", str(server_dir / "enroll-token"),
                "--trial-s", "1", "--telemetry-interval-s", "1")))
        for started in processes[1:]:
            wait_for_json(agents[started.name] / "agent.json", started)
            print(f"   {started.name} is up")

        client = Client.from_data_dir(server_dir)
        print(f"== pushing {MODEL.relative_to(ROOT)}")
        version = client.push_model(MODEL, name="digits")
        print(f"   digits@{version.version} stored and signed")

        print("== deploying digits to all devices")
        deployment = client.deploy("digits", version=version.version, to="all")
        deployment = client.wait_deployment(deployment.id, timeout_s=DEPLOY_TIMEOUT_S)
        for device in deployment.devices:
            print(f"   {device.device_id}: {device.outcome or device.state}")
        if any(device.outcome != "installed" for device in deployment.devices):
            print("the deployment did not install everywhere; agent logs are in demo-data/logs/")
            return 1

        print("== running inferences through each agent's local API")
        with np.load(SAMPLES) as samples:
            for device_id, agent_dir in agents.items():
                correct, total = run_inferences(agent_dir, samples, 50)
                print(f"   {device_id}: {correct}/{total} digits recognised")

        time.sleep(2.5)  # two telemetry windows, so the last batch has reached the server
        rows = []
        for device in client.list_devices():
            stats = device.active_stats
            active = f"{device.active_model}@{device.active_version}" if device.active_model else "-"
            rows.append([device.id, device.hardware_class or "-", active, device.state or "-",
                         milliseconds(stats.p50_ms if stats else None),
                         milliseconds(stats.p95_ms if stats else None),
                         str(stats.inferences if stats else 0)])
        print()
        print_table(rows, ["device", "hardware", "model", "state", "p50 ms", "p95 ms", "inferences"])
        print()
        print("Look further (start the server again with the first command):")
        print(f"  .venv/bin/fleetcast server --data {server_dir.relative_to(ROOT)}")
        print(f"  .venv/bin/fleetcast device list --data {server_dir.relative_to(ROOT)}")
        print(f"  .venv/bin/fleetcast deploy status {deployment.id} --data {server_dir.relative_to(ROOT)}")
        print(f"  .venv/bin/fleetcast model show digits --data {server_dir.relative_to(ROOT)}")
        print("  logs: demo-data/logs/")
        return 0
    finally:
        stop(processes[::-1])
        print("== stopped everything the demo started")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
