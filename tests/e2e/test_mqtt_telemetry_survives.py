"""Telemetry and status over MQTT survive the broker: restarts, a SIGKILL while the
server is down, and agent restarts. Real Mosquitto, server and agent processes
(`--telemetry-via-mqtt`); every inference is counted, and counted once."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import models
from tests.support.broker import Broker
from tests.support.deployments import CountedModel, deploy_and_install, push, wait_serving
from tests.support.processes import AgentProcess, ServerProcess
from tests.support.waiting import port_accepts, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.broker]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    # A broker of the test's own: these scenarios restart and kill it.
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def spool_counts(agent: AgentProcess) -> tuple[int, int]:
    """(spooled batches, queued status reports) in the agent's telemetry.db."""
    with sqlite3.connect(agent.data_dir / "telemetry.db") as db:
        return (int(db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]),
                int(db.execute("SELECT COUNT(*) FROM status").fetchone()[0]))


def assert_counted_exactly(counted: CountedModel, expected: int) -> None:
    """Waits for `expected`, then for the agent's spool to empty (the server acked
    everything it holds): the count must still be `expected`, not one more."""
    counted.wait_count(expected, what=f"the server to count {expected} inferences")
    wait_for(lambda: spool_counts(counted.agent) == (0, 0), timeout_s=60,
             what="the agent's spool to empty (everything acknowledged)",
             context=lambda: f"spool={spool_counts(counted.agent)}\n{counted.agent.log_tail()}")
    assert counted.count() == expected


def mqtt_agent(new_server: Callable[..., ServerProcess], new_agent: Callable[..., AgentProcess], broker: Broker,
               device_id: str) -> tuple[ServerProcess, AgentProcess]:
    server = new_server(f"{device_id}-server", mqtt_url=broker.url)
    agent = new_agent(server, device_id, mqtt_url=broker.url, extra_args=["--telemetry-via-mqtt"])
    return server, agent


def published_telemetry(broker: Broker, device_id: str, since: int) -> bool:
    """The broker's (verbose) log shows a telemetry PUBLISH from the device after `since`."""
    log = broker.log_path.read_text(errors="replace")[since:]
    return any(f"Received PUBLISH from {device_id} " in line and f"/devices/{device_id}/telemetry" in line
               for line in log.splitlines())


def kill_and_restart(broker: Broker) -> None:
    broker.kill()
    wait_for(lambda: not port_accepts("127.0.0.1", broker.port), timeout_s=10, what="the broker port to close")
    broker.start()


def test_broker_restart_while_the_agent_sends_loses_nothing_and_a_later_deployment_reports(
    broker: Broker, new_server, new_agent, tmp_path: Path
) -> None:
    server, agent = mqtt_agent(new_server, new_agent, broker, "mq-restart")
    counted = CountedModel(server, agent, models.write(models.tiny_classifier(401), tmp_path / "a.onnx"),
                           name="mq-restart-model")
    done, stop = [0], threading.Event()

    def infer_until_stopped() -> None:
        while not stop.is_set():
            counted.infer()
            done[0] += 1

    worker = threading.Thread(target=infer_until_stopped)
    worker.start()
    try:
        wait_for(lambda: done[0] >= 20, timeout_s=30, what="inferences before the restart")
        broker.restart()
        wait_for(lambda: done[0] >= 60, timeout_s=30, what="inferences after the restart")
    finally:
        stop.set()
        worker.join(30)
    assert_counted_exactly(counted, counted.base + done[0])
    # The status of a later deployment comes up over the same (reconnected) uplink.
    newer = models.write(models.tiny_classifier(402), tmp_path / "b.onnx")
    version = push(server, newer, name="mq-restart-model").version
    deploy_and_install(server, [agent], "mq-restart-model", version)
    wait_serving(agent, "mq-restart-model", version)


def test_broker_killed_while_the_server_is_down_loses_no_inference(
    broker: Broker, new_server, new_agent, tmp_path: Path
) -> None:
    server = new_server("mq-kill-server", mqtt_url=broker.url)
    path = models.write(models.tiny_classifier(403), tmp_path / "k.onnx")
    counted = []
    for device_id in ("mq-kill-a", "mq-kill-b"):
        agent = new_agent(server, device_id, mqtt_url=broker.url, extra_args=["--telemetry-via-mqtt"])
        counted.append(CountedModel(server, agent, path, name=f"{device_id}-model"))
    server.stop()
    for i, c in enumerate(counted):
        c.infer(150 + 100 * i)
    # The agents publish while the server is away and the broker takes it all; with no
    # ack from the server the batches stay spooled on the devices.
    since = broker.log_path.stat().st_size
    wait_for(lambda: all(published_telemetry(broker, c.agent.device_id, since) for c in counted), timeout_s=30,
             what="both agents to publish telemetry", context=broker.log_tail)
    assert all(spool_counts(c.agent)[0] > 0 for c in counted)
    kill_and_restart(broker)   # a crash, not a clean stop: what the broker held in memory is gone
    server.start()
    for i, c in enumerate(counted):
        assert_counted_exactly(c, c.base + 150 + 100 * i)


def test_agent_restarts_lose_nothing_and_count_nothing_twice(
    broker: Broker, new_server, new_agent, tmp_path: Path
) -> None:
    server, agent = mqtt_agent(new_server, new_agent, broker, "mq-agent-restart")
    counted = CountedModel(server, agent, models.write(models.tiny_classifier(404), tmp_path / "r.onnx"),
                           name="mq-agent-restart-model")
    counted.infer(40)
    agent.restart()                       # the open window is spooled at stop, sent after start
    counted.infer(30)
    broker.stop()
    counted.infer(20)
    wait_for(lambda: spool_counts(agent)[0] > 0, timeout_s=30,
             what="a window to close while the broker is away", context=agent.log_tail)
    counted.infer(15)                     # counted after the sender first found no broker
    agent.restart()                       # stopped while the sender cannot reach the broker
    broker.start()
    server.stop()
    counted.infer(15)                     # spooled unacknowledged while the server is away ...
    agent.restart()                       # ... across another restart
    server.start()
    counted.infer(10)
    assert_counted_exactly(counted, counted.base + 130)
