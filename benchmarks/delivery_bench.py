"""Delivery benchmarks: rollout time, and inferences failed during model swaps.

    .venv/bin/python benchmarks/delivery_bench.py rollout --agents 20 --megabytes 5
    .venv/bin/python benchmarks/delivery_bench.py swap --swaps 5

`rollout` starts a real server and N real agent processes, pushes a model of the
given size and times the deploy command to the last agent serving it; in the same
run, N clients download the same bytes from a plain HTTP server, which is the floor
any OTA system stands on. `swap` keeps an agent's local inference API busy from
several threads while new versions are deployed and counts failed inferences.
Absolute times drift on shared machines: read the ratios. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import models  # noqa: E402  (the benchmarks reuse the test harness)
from tests.support.processes import AgentProcess, Fleet, ServerProcess  # noqa: E402
from tests.support.static_http import serving_directory  # noqa: E402

HARDWARE = ("x86-cpu", "arm-cpu", "rk3399", "jetson", "movidius", "phone-android", "phone-ios")


def plain_http_download_s(path: Path, clients: int, *, sha256: bool = False) -> float:
    """Seconds for `clients` concurrent plain HTTP GETs of the file to complete (with
    `sha256`, each client also hashes what it read and checks it, as an installer would)."""
    size = path.stat().st_size
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if sha256 else ""
    with serving_directory(path.parent) as base:
        url = f"{base}/{path.name}"

        def fetch() -> None:
            with urllib.request.urlopen(url) as response:
                data = response.read()
            assert len(data) == size, f"plain download got {len(data)} of {size} bytes"
            assert not sha256 or hashlib.sha256(data).hexdigest() == digest, "plain download: another sha256"

        threads = [threading.Thread(target=fetch) for _ in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start


def rollout(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fleetcast-bench-") as tmp:
        root = Path(tmp)
        model_path = models.write(models.sized_model(args.megabytes, seed=7), root / "model.onnx")
        server = ServerProcess(root / "server").start()
        devices = [(f"bench-{i:03d}", HARDWARE[i % len(HARDWARE)]) for i in range(args.agents)]
        fleet = Fleet(root / "agents", server, devices, extra_args=["--trial-s", str(args.trial_s)])
        try:
            started = time.perf_counter()
            fleet.start()
            print(f"{args.agents} agents up in {time.perf_counter() - started:.1f} s")
            with server.client() as client:
                version = client.push_model(model_path, name="bench")
                runs = []
                for _ in range(args.repeat):
                    plain = plain_http_download_s(model_path, args.agents)
                    start = time.perf_counter()
                    deployment = client.deploy("bench", version=version.version, to="all")
                    done = client.wait_deployment(deployment.id, timeout_s=600)
                    ours = time.perf_counter() - start
                    outcomes = {d.outcome for d in done.devices}
                    assert outcomes == {"installed"}, f"not all installed: {outcomes}"
                    runs.append((ours, plain))
                    print(f"rollout {ours:.2f} s, plain HTTP {plain:.3f} s, ratio {ours / plain:.1f}x")
                    version = client.push_model(models.write(
                        models.sized_model(args.megabytes, seed=8 + len(runs)), root / f"m{len(runs)}.onnx"),
                        name="bench")
        finally:
            fleet.stop()
            server.stop()
    ours_median = statistics.median(r[0] for r in runs)
    plain_median = statistics.median(r[1] for r in runs)
    size_mb = model_path.stat().st_size / 1e6 if model_path.exists() else args.megabytes
    print(f"\nRESULT rollout agents={args.agents} model_mb={size_mb:.1f} trial_s={args.trial_s} "
          f"median_rollout_s={ours_median:.2f} median_plain_http_s={plain_median:.3f} "
          f"ratio={ours_median / plain_median:.1f}")


def load(agent: AgentProcess, stop: threading.Event, counts: dict[str, int], lock: threading.Lock) -> None:
    x = models.sample_input()
    with agent.inference_client() as client:
        while not stop.is_set():
            try:
                client.infer({"input": x})
                key = "ok"
            except Exception as e:  # every failure counts, whatever its type
                key = "failed"
                print(f"inference failed: {e}", file=sys.stderr)
            with lock:
                counts[key] = counts.get(key, 0) + 1


def swap(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fleetcast-bench-") as tmp:
        root = Path(tmp)
        server = ServerProcess(root / "server").start()
        agent = AgentProcess(root / "agent", server=server, device_id="swap-1", hardware="x86-cpu",
                             trust_root=server.trust_root, enroll_token=server.enroll_token).start()
        counts: dict[str, int] = {}
        lock = threading.Lock()
        stop = threading.Event()
        try:
            with server.client() as client:
                def deploy(seed: int) -> None:
                    path = models.write(models.sized_model(1.0, seed=seed), root / f"m{seed}.onnx")
                    version = client.push_model(path, name="swap")
                    done = client.wait_deployment(
                        client.deploy("swap", version=version.version, to="device:swap-1").id, timeout_s=120)
                    assert done.devices[0].outcome == "installed", done.raw

                deploy(1)
                threads = [threading.Thread(target=load, args=(agent, stop, counts, lock))
                           for _ in range(args.threads)]
                for t in threads:
                    t.start()
                for seed in range(2, 2 + args.swaps):
                    deploy(seed)
                    print(f"swap {seed - 1} done, inferences so far {counts}")
                stop.set()
                for t in threads:
                    t.join()
        finally:
            stop.set()
            agent.stop()
            server.stop()
    print(f"\nRESULT swap swaps={args.swaps} threads={args.threads} "
          f"inferences_ok={counts.get('ok', 0)} inferences_failed={counts.get('failed', 0)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rollout")
    r.add_argument("--agents", type=int, default=20)
    r.add_argument("--megabytes", type=float, default=5.0)
    r.add_argument("--repeat", type=int, default=3)
    r.add_argument("--trial-s", type=float, default=1.0)
    s = sub.add_parser("swap")
    s.add_argument("--swaps", type=int, default=5)
    s.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    commands: dict[str, Callable[[argparse.Namespace], None]] = {"rollout": rollout, "swap": swap}
    commands[args.command](args)


if __name__ == "__main__":
    main()
