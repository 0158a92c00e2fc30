"""Render time of `GET /metrics` and `GET /v1/devices` on a real server with a seeded fleet.

    .venv/bin/python benchmarks/monitoring_bench.py --devices 1000,10000 --repeat 7

For each fleet size: a fresh data dir is seeded through the server's own store (devices
of four hardware classes, each with telemetry for two model versions and an active
version), then `fleetcast server` runs on it as a subprocess and each endpoint is
fetched --repeat times over HTTP on loopback. Prints the median and the worst, in
milliseconds, as the markdown rows of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from fleetcast.proto import telemetry as buckets
from fleetcast.server.config import ServerConfig
from fleetcast.server.services import open_services
from fleetcast.server.store import Device, StatsRow

HARDWARE = ("x86-cpu", "rk3399", "jetson", "phone-android")


def seed(data: Path, devices: int) -> None:
    rng = np.random.default_rng(devices)
    services = open_services(ServerConfig(data_dir=data))
    try:
        now = time.time()
        for i in range(devices):
            device_id = f"bench-{i:05d}"
            services.store.put_device(Device(
                device_id=device_id, token_sha256=f"{i:064x}", hardware_class=HARDWARE[i % len(HARDWARE)],
                backends=("onnxruntime",), group="bench", labels={}, agent_version="0.1.0", enrolled_at=now,
                last_seen=now - float(rng.integers(0, 600)), active_model="digits@2", state="idle"))
            rows = []
            for version in ("1", "2"):
                counts = buckets.empty()
                for b, n in zip(*np.unique(rng.integers(20, 40, size=200), return_counts=True)):
                    counts[int(b)] = int(n)
                rows.append(StatsRow("digits", version, "original", 200, int(rng.integers(0, 3)), 300.0,
                                     tuple(counts)))
            services.store.ingest_telemetry(device_id, "seed", rows, now)
    finally:
        services.close()


def timed_get(url: str, token: str, context: ssl.SSLContext) -> float:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120, context=context) as r:
        r.read()
    return (time.perf_counter() - started) * 1000


def run(devices: int, repeat: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="fc-monbench-") as tmp:
        data = Path(tmp) / "data"
        t0 = time.perf_counter()
        seed(data, devices)
        seeded_s = time.perf_counter() - t0
        log = open(Path(tmp) / "server.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "fleetcast.sdk.console", "server", "--data", str(data),
                                 "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not (data / "server.json").exists():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"server did not start; see {tmp}/server.log")
                time.sleep(0.1)
            http = json.loads((data / "server.json").read_text())["http"]
            token = (data / "operator-token").read_text().strip()
            context = ssl.create_default_context(cafile=str(data / "server-ca.pem"))   # the server's own CA
            rows = []
            for path in ("/metrics", "/v1/devices"):
                timed_get(http + path, token, context)  # warm
                times = [timed_get(http + path, token, context) for _ in range(repeat)]
                rows.append(f"| {devices} | `GET {path}` | {statistics.median(times):.0f} | {max(times):.0f} | "
                            f"{repeat} |")
            print(f"# {devices} devices seeded in {seeded_s:.1f} s", file=sys.stderr)
            return rows
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="1000,10000", help="comma-separated fleet sizes")
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("| devices | request | median ms | worst ms | runs |")
    print("|---|---|---|---|---|")
    for n in (int(x) for x in args.devices.split(",")):
        for row in run(n, args.repeat):
            print(row, flush=True)


if __name__ == "__main__":
    main()
