"""Render time of `GET /metrics`, `GET /v1/devices` (its first page, and every page) and the
dashboard's device table on a real server with a seeded fleet.

    .venv/bin/python benchmarks/monitoring_bench.py --devices 1000,10000 --repeat 7

For each fleet size: a fresh data dir is seeded through the server's own store (devices
of four hardware classes, each with telemetry for two model versions and an active
version), then `fleetcast server` runs on it as a subprocess and each endpoint is
fetched --repeat times over HTTP on loopback (the dashboard's pages with a session
opened through its login form). Prints the median and the worst, in milliseconds, as
the markdown rows of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import re
import platform
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import numpy as np

from fleetcast.proto import telemetry as buckets
from fleetcast.server.config import ServerConfig
from fleetcast.server.services import open_services
from fleetcast.server.store import Device, StatsRow, TelemetryBatch

HARDWARE = ("x86-cpu", "rk3399", "jetson", "phone-android")


def seed(data: Path, devices: int) -> None:
    rng = np.random.default_rng(devices)
    services = open_services(ServerConfig(data_dir=data))
    try:
        now = time.time()
        batches = []
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
                                     tuple(counts), backend="onnxruntime"))
            batches.append(TelemetryBatch(device_id, "seed", rows))
            if len(batches) == 500:   # as the server's group commit writes them
                services.store.ingest_telemetry_many(batches, now)
                batches = []
        if batches:
            services.store.ingest_telemetry_many(batches, now)
    finally:
        services.close()


DASHBOARD = (
    ("device table, first page", "/ui/devices"),
    ("device table, filtered", "/ui/devices?hardware=rk3399&liveness=late"),
    ("device table, sorted", "/ui/devices?sort=last_seen&order=desc&page=20"),
    ("device table, CSV export (all)", "/ui/devices.csv"),
    ("overview", "/ui/"),
)


def timed_get(url: str, token: str, context: ssl.SSLContext,
              opener: urllib.request.OpenerDirector | None = None) -> float:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if opener is None else {})
    started = time.perf_counter()
    with (opener.open(req, timeout=120) if opener else urllib.request.urlopen(req, timeout=120, context=context)) as r:
        r.read()
        if r.status != 200:
            raise SystemExit(f"{url} answered {r.status}")
    return (time.perf_counter() - started) * 1000


def timed_all_pages(url: str, token: str, context: ssl.SSLContext) -> float:
    """Walks a paged list (`next` as `after`) to its end; checks it saw every page once."""
    started, after, seen = time.perf_counter(), "", set()
    while True:
        req = urllib.request.Request(url + (f"?after={after}" if after else ""),
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=120, context=context) as r:
            page = json.loads(r.read())
        ids = {d["id"] for d in page["devices"]}
        if ids & seen:
            raise SystemExit(f"{url}: a device came twice")
        seen |= ids
        after = page["next"]
        if after is None:
            return (time.perf_counter() - started) * 1000


def logged_in(http: str, token: str, context: ssl.SSLContext) -> urllib.request.OpenerDirector:
    """An opener holding a dashboard session, opened through the login form as a browser does."""
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                         urllib.request.HTTPCookieProcessor(CookieJar()))
    with opener.open(http + "/ui/login", timeout=30) as r:
        nonce = re.search(r'name="login_csrf" value="([^"]*)"', r.read().decode()).group(1)
    body = urllib.parse.urlencode({"login_csrf": nonce, "token": token, "next": "/ui/"}).encode()
    with opener.open(urllib.request.Request(http + "/ui/login", data=body, method="POST"), timeout=30) as r:
        r.read()
    return opener


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
            timed_all_pages(http + "/v1/devices", token, context)  # warm
            times = [timed_all_pages(http + "/v1/devices", token, context) for _ in range(repeat)]
            rows.append(f"| {devices} | every page of `GET /v1/devices` (1,000 a page) | "
                        f"{statistics.median(times):.0f} | {max(times):.0f} | {repeat} |")
            opener = logged_in(http, token, context)
            for what, path in DASHBOARD:
                timed_get(http + path, token, context, opener)  # warm
                times = [timed_get(http + path, token, context, opener) for _ in range(repeat)]
                rows.append(f"| {devices} | {what}: `GET {path}` | {statistics.median(times):.0f} | "
                            f"{max(times):.0f} | {repeat} |")
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
