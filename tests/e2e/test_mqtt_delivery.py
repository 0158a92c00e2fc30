"""Delivery with MQTT notifications: the server and agents are given a real broker."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import models
from tests.support.broker import Broker
from tests.support.deployments import CountedModel, deploy_and_install, push, wait_serving
from tests.support.processes import AgentProcess, Fleet, ServerProcess
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.broker]

HARDWARE = {"mq-x86": "x86-cpu", "mq-arm": "arm-cpu", "mq-jetson": "jetson"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    # Our own broker, not the session one: a scenario here restarts it.
    with Broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture(scope="module")
def mqtt_fleet(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Fleet]]:
    root = tmp_path_factory.mktemp("mqtt")
    server = ServerProcess(root / "server", mqtt_url=broker.url)
    server.start()
    try:
        with Fleet(root / "agents", server, HARDWARE.items(), mqtt_url=broker.url) as fleet:
            yield server, fleet
    finally:
        server.stop()


def assert_notified_over_mqtt(broker: Broker, device_ids: list[str], since: int) -> None:
    """The broker log (verbose) shows an assignment notice sent to each device's client."""
    log = broker.log_path.read_text(errors="replace")[since:]
    for device_id in device_ids:
        topic = f"fleetcast/v1/devices/{device_id}/assignment"
        sent = [line for line in log.splitlines() if f"Sending PUBLISH to {device_id} " in line and topic in line]
        assert sent, f"the broker never sent {topic} to client {device_id}\n{broker.log_tail()}"


def reconnected(broker: Broker, device_ids: list[str], since: int) -> set[str]:
    log = broker.log_path.read_text(errors="replace")[since:]
    back = {d for d in device_ids if f" as {d} " in log}
    return back | ({"fleetcast-server"} if "u'fleetcast-server'" in log else set())


def deploy_new_version(server: ServerProcess, fleet: Fleet, tmp_path: Path, seed: int) -> str:
    model = models.write(models.tiny_classifier(seed), tmp_path / f"m{seed}.onnx")
    version = push(server, model, name="mqtt-classifier").version
    deploy_and_install(server, fleet.agents, "mqtt-classifier", version)
    for agent in fleet:
        wait_serving(agent, "mqtt-classifier", version)
        assert models.sha256_of(agent.active_model_path()) == models.sha256_of(model)
    return version


def test_deploy_with_mqtt_notifications_installs_on_every_device(
    broker: Broker, mqtt_fleet: tuple[ServerProcess, Fleet], tmp_path: Path
) -> None:
    server, fleet = mqtt_fleet
    since = broker.log_path.stat().st_size
    deploy_new_version(server, fleet, tmp_path, seed=11)
    assert_notified_over_mqtt(broker, list(HARDWARE), since)


def test_devices_still_get_notified_and_install_after_the_broker_restarts(
    broker: Broker, mqtt_fleet: tuple[ServerProcess, Fleet], tmp_path: Path
) -> None:
    server, fleet = mqtt_fleet
    broker.restart()
    since = broker.log_path.stat().st_size
    everyone = {*HARDWARE, "fleetcast-server"}
    wait_for(lambda: reconnected(broker, list(HARDWARE), since) == everyone, timeout_s=60,
             what="the server and every agent to reconnect to the restarted broker", context=broker.log_tail)
    deploy_new_version(server, fleet, tmp_path, seed=12)
    assert_notified_over_mqtt(broker, list(HARDWARE), since)


def test_telemetry_published_over_mqtt_while_the_server_is_down_arrives_once_it_returns(
    broker: Broker, new_server, new_agent, tmp_path: Path
) -> None:
    server: ServerProcess = new_server("mqtt-telemetry-server", mqtt_url=broker.url)
    agent = new_agent(server, "mq-telemetry", mqtt_url=broker.url, extra_args=["--telemetry-via-mqtt"])
    counted = CountedModel(server, agent, models.write(models.tiny_classifier(300), tmp_path / "t.onnx"),
                           name="mqtt-counted")
    base, k = counted.base, 20

    server.stop()
    counted.infer(k)
    # The broker takes the batches while the server is away, but only the server's ack
    # lets the agent forget them: they stay spooled until the server is back.
    time.sleep(2.5)  # part of the scenario: telemetry windows close with the server away
    assert spooled_batches(agent) > 0
    server.start()
    counted.wait_count(base + k, what=f"the server to count {base + k} inferences")
    wait_for(lambda: spooled_batches(agent) == 0, timeout_s=30,
             what="the agent's spool to empty once the server acknowledged it", context=lambda: agent.log_tail())
    counted.infer()
    counted.wait_count(base + k + 1, what="the server to count one more inference")
    assert counted.count() == base + k + 1


def spooled_batches(agent: AgentProcess) -> int:
    with sqlite3.connect(agent.data_dir / "telemetry.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM batches").fetchone()[0])

