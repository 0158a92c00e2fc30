"""The fleet simulator against a real server process: the wire contract end to end."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcast.agent.trust import load_trust_root
from fleetcast.server.simulator import cli as simulate
from fleetcast.server.simulator.cohort import CohortError, parse_cohort
from fleetcast.server.simulator.device import DeviceConfig
from fleetcast.server.simulator.mqtt import MqttConfig
from fleetcast.server.simulator.swarm import Swarm, SwarmConfig
from fleetcast.server.store.sqlite import SqliteStore
from tests.support import models
from tests.support.broker import Broker
from tests.support.deployments import push
from tests.support.processes import ServerProcess
from tests.support.static_http import serving_directory


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "server").start()
    try:
        yield process
    finally:
        process.stop()


def _swarm(server: ServerProcess, *cohorts: str, telemetry_interval_s: float = 0.3,
           metadata_bundle: bool = True) -> Swarm:
    return Swarm(SwarmConfig(
        grpc_target=server.grpc, server_ca=server.server_ca.read_bytes(),
        cohorts=[parse_cohort(c) for c in cohorts], devices_per_channel=8,
        device=DeviceConfig(enroll_token=server.enroll_token, trust_root=load_trust_root(server.trust_root),
                            telemetry_interval_s=telemetry_interval_s, inferences_per_interval=20,
                            metadata_bundle=metadata_bundle),
    ))


@pytest.mark.parametrize("metadata_bundle", [True, False], ids=["bundle", "fetch-per-file"])
def test_a_simulated_fleet_installs_a_deployment_and_its_telemetry_is_counted_once(
        server: ServerProcess, tmp_path: Path, metadata_bundle: bool) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(models.to_bytes(models.tiny_classifier(seed=3)))
    push(server, path, name="digits")

    async def scenario() -> tuple[dict, dict]:
        swarm = _swarm(server, "name=cpu,devices=24,latency_ms=5", "name=rk,devices=6,hardware=rk3399,fail_rate=1,"
                       "call_error_rate=0.2,delay_ms=5", metadata_bundle=metadata_bundle)
        try:
            await swarm.enroll()
            swarm.start()
            assert await swarm.wait_watching(30)
            with server.client() as fc:
                deployment_id = await asyncio.to_thread(lambda: fc.deploy("digits", version=None, to="all").id)
            assert await swarm.wait_finished(deployment_id, 60), swarm.summary(deployment_id)
            await asyncio.sleep(1.5)                   # a few telemetry intervals
        finally:
            await swarm.close()
        return swarm.summary(deployment_id), deployment_id

    summary, deployment_id = asyncio.run(scenario())
    assert summary["enrolled"] == 30 and summary["errors"] == 0, summary
    assert summary["outcomes"] == {"installed": 24, "rolled_back": 6}
    assert summary["retries"] > 0                      # the injected call failures were retried
    calls = summary["calls"]
    if metadata_bundle:     # one bundle per check, FetchMetadata only for what a bundle lacked
        assert calls["bundle"] >= 30 and calls.get("fetch", 0) == 0, calls
    else:
        assert "bundle" not in calls and calls["fetch"] >= 30 * 8, calls
    with server.client() as fc:
        doc = fc.get_deployment(deployment_id).raw
    assert doc["counts"]["installed"] == 24 and doc["counts"]["rolled_back"] == 6 and doc["status"] == "partial"
    assert summary["telemetry_inferences"] > 0
    store = SqliteStore(server.db_path)
    try:
        counted = sum(a.inferences for a in store.aggregates())
    finally:
        store.close()
    assert counted == summary["telemetry_inferences"]


def _direct_rollout(server: ServerProcess, model: Path) -> dict:
    push(server, model, name="digits")

    async def scenario() -> dict:
        swarm = Swarm(SwarmConfig(
            grpc_target=server.grpc, server_ca=server.server_ca.read_bytes(),
            cohorts=[parse_cohort("name=cdn,devices=6")], devices_per_channel=8,
            device=DeviceConfig(enroll_token=server.enroll_token, trust_root=load_trust_root(server.trust_root),
                                telemetry_interval_s=3600, direct_download=True)))
        try:
            await swarm.enroll()
            swarm.start(telemetry=False)
            assert await swarm.wait_watching(30)
            with server.client() as fc:
                deployment_id = await asyncio.to_thread(lambda: fc.deploy("digits", version=None, to="all").id)
            assert await swarm.wait_finished(deployment_id, 60), swarm.summary(deployment_id)
            return swarm.summary(deployment_id)
        finally:
            await swarm.close()
    return asyncio.run(scenario())


def test_simulated_devices_download_from_the_located_url_and_fall_back_to_grpc(tmp_path: Path) -> None:
    model = models.write(models.tiny_classifier(seed=4), tmp_path / "m.onnx")
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    with serving_directory(blobs) as cdn:
        server = ServerProcess(tmp_path / "server", extra_args=["--blobs", str(blobs),
                                                                "--download-base-url", cdn]).start()
        try:
            direct = _direct_rollout(server, model)
        finally:
            server.stop()
    assert direct["outcomes"] == {"installed": 6} and direct["errors"] == 0, direct
    assert direct["calls"]["direct"] == 6 and "download" not in direct["calls"], direct["calls"]

    # The same URL with nothing answering: every device takes the gRPC Download instead.
    server = ServerProcess(tmp_path / "server2", extra_args=["--blobs", str(blobs),
                                                             "--download-base-url", cdn]).start()
    try:
        fallback = _direct_rollout(server, models.write(models.tiny_classifier(seed=5), tmp_path / "m2.onnx"))
    finally:
        server.stop()
    assert fallback["outcomes"] == {"installed": 6} and fallback["errors"] == 0, fallback
    assert fallback["calls"]["download"] == 6 and "direct" not in fallback["calls"], fallback["calls"]
@pytest.mark.broker
def test_simulated_devices_told_over_mqtt_by_the_servers_bridge_install(mosquitto: Broker, tmp_path: Path) -> None:
    path = models.write(models.tiny_classifier(seed=4), tmp_path / "m.onnx")
    server = ServerProcess(tmp_path / "server", mqtt_url=mosquitto.url).start()
    try:
        push(server, path, name="mq-digits")

        async def scenario() -> tuple[dict, str, list[float]]:
            swarm = Swarm(SwarmConfig(
                grpc_target=server.grpc, server_ca=server.server_ca.read_bytes(),
                cohorts=[parse_cohort("name=mq,devices=12")], devices_per_channel=4,
                device=DeviceConfig(enroll_token=server.enroll_token, trust_root=load_trust_root(server.trust_root)),
                mqtt=MqttConfig(url=mosquitto.url, ca=mosquitto.ca_path, key_dir=tmp_path / "keys"),
            ))
            try:
                await swarm.enroll()
                swarm.start(telemetry=False)
                assert await swarm.wait_watching(30), swarm.summary()
                with server.client() as fc:
                    deployment_id = await asyncio.to_thread(lambda: fc.deploy("mq-digits", version=None, to="all").id)
                assert await swarm.wait_finished(deployment_id, 60), swarm.summary(deployment_id)
                heard = [d.record.notices[deployment_id] for d in swarm.devices]
            finally:
                await swarm.close()
            return swarm.summary(deployment_id), deployment_id, heard

        summary, deployment_id, heard = asyncio.run(scenario())
    finally:
        server.stop()
    # No device had a watch stream: each heard of its deployment from the broker only.
    assert summary["errors"] == 0 and summary["outcomes"] == {"installed": 12}, summary
    assert summary["noticed"] == 12 and len(heard) == 12
    assert sorted((tmp_path / "keys").glob("*.pem")) and all(
        p.stat().st_mode & 0o077 == 0 for p in (tmp_path / "keys").glob("*.key"))


def test_a_bad_enroll_token_is_an_error_on_every_device(server: ServerProcess) -> None:
    async def scenario() -> dict:
        swarm = Swarm(SwarmConfig(
            grpc_target=server.grpc, server_ca=server.server_ca.read_bytes(),
        cohorts=[parse_cohort("name=x,devices=3")],
            device=DeviceConfig(enroll_token="wrong", trust_root=load_trust_root(server.trust_root)),
        ))
        try:
            await swarm.enroll()
        finally:
            await swarm.close()
        return swarm.summary()

    summary = asyncio.run(scenario())
    assert summary["enrolled"] == 0 and summary["errors"] == 3
    assert "UNAUTHENTICATED" in summary["first_errors"][0]


@pytest.mark.parametrize("text, words", [
    ("name=a,devices=0", "devices must be"), ("name=a,colour=red", "not known"),
    ("name=a,error_rate=2", "error_rate"), ("name=a,devices=many", "not a int"), ("name=../x", "cohort name"),
])
def test_cohort_descriptions_are_checked_naming_the_field(text: str, words: str) -> None:
    with pytest.raises(CohortError, match=words):
        parse_cohort(text)


def test_simulate_refuses_a_plaintext_broker_off_loopback_before_enrolling(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "enroll-token"
    token.write_text("never-sent")
    code = simulate.main(["--grpc", "127.0.0.1:9", "--enroll-token-file", str(token), "--trust-root",
                          str(tmp_path / "trust-root.json"), "--mqtt", "mqtt://broker.example:1883"])
    assert code == 2
    assert "plaintext to a host off loopback" in capsys.readouterr().err


def test_devices_given_several_targets_take_them_in_turn(server: ServerProcess, tmp_path: Path) -> None:
    other_dir = tmp_path / "other"          # the same TLS identity, its own store and enroll token
    other_dir.mkdir(mode=0o700)
    shutil.copytree(server.tls_dir, other_dir / "tls")
    other = ServerProcess(other_dir).start()
    try:
        async def scenario() -> list[str]:
            swarm = Swarm(SwarmConfig(
                grpc_target=server.grpc, grpc_targets=[server.grpc, other.grpc], server_ca=server.server_ca.read_bytes(),
                cohorts=[parse_cohort("name=x,devices=6")], devices_per_channel=2,
                device=DeviceConfig(enroll_token=server.enroll_token, trust_root=load_trust_root(server.trust_root)),
            ))
            try:
                await swarm.enroll()
            finally:
                await swarm.close()
            assert swarm.summary()["errors"] == 3 and "UNAUTHENTICATED" in swarm.summary()["first_errors"][0]
            return [d.device_id for d in swarm.enrolled()]

        enrolled = asyncio.run(scenario())
    finally:
        other.stop()
    assert enrolled == ["sim-x-00000", "sim-x-00002", "sim-x-00004"]       # device n on target n mod 2
    with server.client() as fc:
        assert sorted(d.id for d in fc.list_devices()) == enrolled
