"""A staged rollout against a real server process and a simulated fleet of three cohorts.

The suite runs 3 cohorts x 30 devices; `benchmarks/rollout_bench.py --cohort-devices 300`
runs the issue's 3 x 300.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcast.agent.trust import load_trust_root
from fleetcast.server.simulator.cohort import parse_cohort
from fleetcast.server.simulator.device import DeviceConfig
from fleetcast.server.simulator.swarm import Swarm, SwarmConfig
from tests.support import models
from tests.support.deployments import push
from tests.support.processes import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "server").start()
    try:
        yield process
    finally:
        process.stop()


def test_only_the_cohort_a_slower_version_hurts_is_stopped_and_reverted(server: ServerProcess, tmp_path: Path) -> None:
    for seed in (1, 2):
        path = tmp_path / f"m{seed}.onnx"
        path.write_bytes(models.to_bytes(models.tiny_classifier(seed=seed)))
        push(server, path, name="digits", version=str(seed))
    cohorts = ["name=cpu,devices=30,latency_ms=8", "name=arm,devices=30,hardware=arm-cpu,latency_ms=20",
               "name=rk,devices=30,hardware=rk3399,latency_ms=30,slow_version=2,slow_factor=1.3"]

    async def scenario() -> tuple[dict, dict[str, str]]:
        swarm = Swarm(SwarmConfig(
            grpc_target=server.grpc, server_ca=server.server_ca.read_bytes(),
            cohorts=[parse_cohort(c) for c in cohorts], devices_per_channel=15,
            device=DeviceConfig(enroll_token=server.enroll_token, trust_root=load_trust_root(server.trust_root),
                                telemetry_interval_s=0.25, inferences_per_interval=40)))
        try:
            await swarm.enroll()
            swarm.start()
            assert await swarm.wait_watching(30)
            with server.client() as fc:
                first = await asyncio.to_thread(lambda: fc.deploy("digits", version="1", to="all").id)
                assert await swarm.wait_finished(first, 60), swarm.summary(first)
                rollout = await asyncio.to_thread(lambda: fc.start_rollout("digits", version="2", options={
                    "stages": "10%,100%", "soak_s": 3, "gates": ["latency_p95 <= 1.2x control", "serving >= 1"],
                    "min_inferences": 400, "hold_back": True, "device_timeout_s": 30}))
                done = await asyncio.to_thread(lambda: fc.wait_rollout(rollout.id, timeout_s=90, poll_s=0.3))
                await asyncio.sleep(1.0)     # the last reverted devices install their previous version
                return done.raw, {d.device_id: d.active_model for d in swarm.devices}
        finally:
            await swarm.close()

    started = time.monotonic()
    doc, active = asyncio.run(scenario())
    assert doc["state"] == "completed" and doc["healthy"] is False, doc["log"][-3:]
    held = [e for e in doc["log"] if e["event"] == "cohort_held"]
    assert len(held) == 1 and held[0]["reason"].startswith("stage 0 failed: rk3399/")
    failed = [c for c in held[0]["snapshot"]["checks"] if c["verdict"] == "fail"]
    assert {c["cohort"].split("/")[0] for c in failed} == {"rk3399"}
    assert all(c["value"] > 1.2 and c["control"] for c in failed)
    by_cohort = doc["stages"][0]["cohorts"] | {}
    for cohort, states in doc["stages"][1]["cohorts"].items():
        if cohort.startswith("rk3399"):
            assert states == {"held": 27}                  # never given the version that hurt them
        else:
            assert states == {"serving": 27}
    rk_canaries = next(v for k, v in by_cohort.items() if k.startswith("rk3399"))
    assert rk_canaries == {"reverted": 3}
    assert all(m == "digits@1" for d, m in active.items() if d.startswith("sim-rk-")), active
    assert sum(m == "digits@2" for m in active.values()) == 60
    assert time.monotonic() - started < 60
