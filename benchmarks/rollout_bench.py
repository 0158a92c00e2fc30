"""Staged rollouts against one real `fleetcast server` process and a simulated fleet.

    .venv/bin/python benchmarks/rollout_bench.py --devices 1000 --stages 1%,10%,100% --soak-s 30
    .venv/bin/python benchmarks/rollout_bench.py --devices 900 --slow-cohort --soak-s 20

Enrolls the devices in three cohorts (x86-cpu, arm-cpu, rk3399; fleetcast.server.simulator:
real gRPC, both TUF repositories verified, artifacts downloaded and hashed, telemetry with
per-cohort latency distributions), deploys version 1 to all, then starts a rollout of
version 2 and measures the time from `rollout start` to its end against the sum of the
soak times (target: within 1.2x), and the server's CPU per device per stage above the
CPU the same fleet's telemetry costs while no rollout runs (measured for as long just
before, from /proc, the server process only). `--slow-cohort` makes version 2 30 %
slower on rk3399 only and checks that only that cohort is stopped and reverted (the
rollout holds it back and goes on with the others). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.swarm import cpu_s  # noqa: E402
from fleetcast.agent.trust import load_trust_root  # noqa: E402
from fleetcast.server.simulator.cohort import Cohort  # noqa: E402
from fleetcast.server.simulator.device import DeviceConfig  # noqa: E402
from fleetcast.server.simulator.swarm import Swarm, SwarmConfig  # noqa: E402
from tests.support import models  # noqa: E402
from tests.support.processes import ServerProcess  # noqa: E402

COHORTS = (("cpu", "x86-cpu", 8.0), ("arm", "arm-cpu", 20.0), ("rk", "rk3399", 30.0))


def swarm_for(server: ServerProcess, args: argparse.Namespace) -> Swarm:
    per = args.devices // len(COHORTS)
    cohorts = [Cohort(name=name, devices=per, hardware=hw, latency_ms=ms,
                      **({"slow_version": "2", "slow_factor": 1.3} if args.slow_cohort and name == "rk" else {}))
               for name, hw, ms in COHORTS]
    return Swarm(SwarmConfig(
        grpc_target=server.grpc, server_ca=server.server_ca.read_bytes(), cohorts=cohorts,
        devices_per_channel=100, enroll_concurrency=100,
        device=DeviceConfig(enroll_token=server.enroll_token, trust_root=load_trust_root(server.trust_root),
                            telemetry_interval_s=args.telemetry_interval_s, inferences_per_interval=50,
                            rpc_timeout_s=600.0)))


async def scenario(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    swarm = swarm_for(server, args)
    try:
        await swarm.enroll()
        swarm.start()
        assert await swarm.wait_watching(300)
        with server.client() as fc:
            first = await asyncio.to_thread(lambda: fc.deploy("bench", version="1", to="all").id)
            assert await swarm.wait_finished(first, 600), swarm.summary(first)
            idle_cpu0, idle0 = cpu_s(server.pid), time.monotonic()
            await asyncio.sleep(args.baseline_s)           # the fleet's telemetry alone
            idle_rate = (cpu_s(server.pid) - idle_cpu0) / (time.monotonic() - idle0)
            cpu0, start = cpu_s(server.pid), time.monotonic()
            rollout = await asyncio.to_thread(lambda: fc.start_rollout("bench", version="2", options={
                "stages": args.stages, "soak_s": args.soak_s, "min_inferences": 500, "device_timeout_s": 300,
                "gates": ["latency_p95 <= 1.2x control", "error_rate <= 0.05", "serving >= 0.99"],
                "hold_back": args.slow_cohort}))
            done = await asyncio.to_thread(lambda: fc.wait_rollout(rollout.id, timeout_s=1800, poll_s=0.5))
            wall = time.monotonic() - start
            cpu = cpu_s(server.pid) - cpu0
        await asyncio.sleep(3)
        active = {d.device_id: d.active_model for d in swarm.devices}
        return {"wall_s": wall, "cpu_s": cpu, "idle_rate": idle_rate, "doc": done.raw, "active": active,
                "errors": swarm.summary()["errors"]}
    finally:
        await swarm.close(grace_s=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--stages", default="1%,10%,100%")
    parser.add_argument("--soak-s", type=float, default=30.0)
    parser.add_argument("--telemetry-interval-s", type=float, default=5.0)
    parser.add_argument("--baseline-s", type=float, default=20.0)
    parser.add_argument("--slow-cohort", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetcast-rollout-") as tmp:
        root = Path(tmp)
        server = ServerProcess(root / "server").start()
        try:
            with server.client() as fc:
                for seed in (1, 2):
                    path = models.write(models.tiny_classifier(seed=seed), root / f"m{seed}.onnx")
                    fc.push_model(path, name="bench", version=str(seed))
            r = asyncio.run(scenario(server, args))
        finally:
            server.stop()
    doc = r["doc"]
    stages = len(doc["stages"])
    soaks = stages * args.soak_s
    above = r["cpu_s"] - r["idle_rate"] * r["wall_s"]
    for s in doc["stages"]:
        install = (s["soak_started_at"] or 0) - (s["started_at"] or 0)
        judged = (s["ended_at"] or 0) - (s["soak_started_at"] or 0)
        print(f"stage={s['index']} size={s['size']} state={s['state']} start_to_settled_s={install:.1f} "
              f"settled_to_passed_s={judged:.1f} cohorts={s['cohorts']}")
    held = [e["reason"] for e in doc["log"] if e["event"] == "cohort_held"]
    on_v2 = {c: sum(1 for d, m in r["active"].items() if d.startswith(f"sim-{c}-") and m == "bench@2")
             for c, _, _ in COHORTS}
    print(f"held={held}\ndevices on version 2 per cohort={on_v2} simulator errors={r['errors']}")
    print(f"RESULT rollout_bench devices={args.devices} stages={args.stages} soak_s={args.soak_s:g} "
          f"state={doc['state']} healthy={doc['healthy']} start_to_end_s={r['wall_s']:.1f} sum_of_soaks_s={soaks:g} "
          f"ratio={r['wall_s'] / soaks:.3f} server_cpu_s={r['cpu_s']:.1f} "
          f"telemetry_only_cpu_s_per_s={r['idle_rate']:.3f} "
          f"cpu_ms_per_device_per_stage={1000 * r['cpu_s'] / args.devices / stages:.2f} "
          f"above_telemetry_ms_per_device_per_stage={1000 * above / args.devices / stages:.2f}", flush=True)


if __name__ == "__main__":
    main()
