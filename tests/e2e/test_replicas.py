"""Two `fleetcast server` replicas on one PostgreSQL database and one blobs dir.

A simulated fleet is split across them; each device's channel knows both addresses
(gRPC pick_first over `ipv4:A,B`), as a fleet behind a load balancer would. A deploy
through one replica reaches devices watching the other; killing a replica mid-rollout
loses nothing: its devices reconnect to the other, which signs what was left unsigned,
and telemetry acknowledged by either is counted once.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcast.agent.trust import load_trust_root
from fleetcast.server.simulator.cohort import parse_cohort
from fleetcast.server.simulator.device import DeviceConfig
from fleetcast.server.simulator.swarm import Swarm, SwarmConfig
from fleetcast.server.store.open import open_store
from tests.support import models, postgres
from tests.support.deployments import push
from tests.support.processes import ServerProcess

SHARED_FILES = ("keys", "tls", "operator-token", "enroll-token", "metrics-token")


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess, str]]:
    with postgres.database() as url:
        shared = ["--store", url, "--blobs", str(tmp_path / "blobs")]
        first = ServerProcess(tmp_path / "first", extra_args=shared).start()
        try:
            second_dir = tmp_path / "second"
            second_dir.mkdir(mode=0o700)
            for name in SHARED_FILES:   # what an operator copies (or mounts) into every replica
                source = first.data_dir / name
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, second_dir / name)
            second = ServerProcess(second_dir, extra_args=shared).start()
            try:
                yield first, second, url
            finally:
                second.stop()
        finally:
            first.stop()


def _swarm(prefix: str, targets: list[str], first: ServerProcess) -> Swarm:
    return Swarm(SwarmConfig(
        grpc_target="ipv4:" + ",".join(targets), server_ca=first.server_ca.read_bytes(), prefix=prefix,
        cohorts=[parse_cohort("name=cpu,devices=12,latency_ms=5")], devices_per_channel=4,
        device=DeviceConfig(enroll_token=first.enroll_token, trust_root=load_trust_root(first.trust_root),
                            telemetry_interval_s=0.3, inferences_per_interval=10),
    ))


def test_a_fleet_split_across_two_replicas_installs_and_survives_losing_one(
        replicas: tuple[ServerProcess, ServerProcess, str], tmp_path: Path) -> None:
    first, second, url = replicas
    for seed, name in ((3, "v1.onnx"), (4, "v2.onnx")):
        (tmp_path / name).write_bytes(models.to_bytes(models.tiny_classifier(seed=seed)))
    push(first, tmp_path / "v1.onnx", name="digits")
    push(second, tmp_path / "v2.onnx", name="digits")      # either replica takes uploads; versions stay distinct

    async def scenario() -> tuple[list[dict], list[dict]]:
        on_first = _swarm("a-", [first.grpc, second.grpc], first)
        on_second = _swarm("b-", [second.grpc, first.grpc], first)
        swarms = [on_first, on_second]
        try:
            for swarm in swarms:
                await swarm.enroll()
                assert len(swarm.enrolled()) == 12, swarm.summary()
                swarm.start()
            for swarm in swarms:
                assert await swarm.wait_watching(30)
            with first.client() as fc:
                one = await asyncio.to_thread(lambda: fc.deploy("digits", version="1", to="all").id)
            for swarm in swarms:                              # the second's devices hear of the first's deploy
                assert await swarm.wait_finished(one, 30), swarm.summary(one)
            with first.client() as fc:
                two = await asyncio.to_thread(lambda: fc.deploy("digits", version="2", to="all").id)
            await asyncio.to_thread(first.kill)               # mid-rollout: before or while it signs
            for swarm in swarms:
                assert await swarm.wait_finished(two, 40), swarm.summary(two)
            await asyncio.sleep(1.0)                          # telemetry of the new version, to the survivor
        finally:
            for swarm in swarms:
                await swarm.close()
        return [s.summary(one) for s in swarms], [s.summary(two) for s in swarms]

    firsts, seconds = asyncio.run(scenario())
    for summary in firsts + seconds:
        assert summary["enrolled"] == 12 and summary["errors"] == 0, summary
        assert summary["outcomes"] == {"installed": 12}, summary
    store = open_store(url)
    try:
        [latest] = [d for d in store.deployments() if d.version == "2"]
        assert store.deployment_counts(latest.deployment_id) == {"installed": 24}
        counted = sum(a.inferences for a in store.aggregates())
    finally:
        store.close()
    assert counted == sum(s["telemetry_inferences"] for s in seconds)   # the swarms' totals: acked, once each
