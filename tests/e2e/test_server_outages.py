"""The server goes away and comes back: deployments finish, telemetry counts once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support import models
from tests.support.deployments import (
    CountedModel, deploy, deployment_doc, device_entries, assert_installed, push, show, wait_outcomes, wait_serving,
)
from tests.support.processes import Fleet, ServerProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

RATE_FLAG = "--download-rate-bps"


def test_server_restarted_in_the_middle_of_a_deployment_still_completes_it(new_server, tmp_path: Path) -> None:
    server: ServerProcess = new_server()
    devices = {"out-1": "x86-cpu", "out-2": "arm-cpu"}
    model = models.write(models.sized_model(6.0, seed=5), tmp_path / "m.onnx")
    with Fleet(tmp_path / "agents", server, devices.items()) as fleet:
        version = push(server, model, name="outage").version
        deployment = deploy(server, "outage", version=version, devices=list(devices))
        # Kill as soon as any device is on its way (or at once, if none reported yet).
        try:
            wait_for(lambda: any(e.get("state") for e in device_entries(deployment_doc(server, deployment)).values()
                                 if not e.get("outcome")),
                     timeout_s=5, interval_s=0.05, what="a device to start the update")
        except AssertionError:
            pass  # a kill before any device reported is a restart in the middle too
        at_kill = device_entries(deployment_doc(server, deployment))
        server.kill()
        print(f"server killed with device states {show(at_kill)}")
        server.start()
        entries = wait_outcomes(server, deployment, devices=list(devices), timeout_s=120, logs=fleet.log_tails)
        assert_installed(entries, fleet.log_tails)
        for agent in fleet:
            wait_serving(agent, "outage", version)
            assert models.sha256_of(agent.active_model_path()) == models.sha256_of(model)


def test_telemetry_sent_while_server_is_down_arrives_exactly_once(new_server, new_agent, tmp_path: Path) -> None:
    server: ServerProcess = new_server()
    agent = new_agent(server, "dev-telemetry")
    counted = CountedModel(server, agent, models.write(models.tiny_classifier(200), tmp_path / "t.onnx"),
                           name="counted")
    base, k = counted.base, 25

    server.stop()
    counted.infer(k)
    time.sleep(2.5)  # part of the scenario: telemetry windows close with the server away
    server.start()
    # Kill the agent the moment the server has stored some of the spooled telemetry: the
    # agent may not have seen the acknowledgement, so its next start sends those batches again.
    wait_for(lambda: counted.count() > base, timeout_s=60, interval_s=0.02,
             what="the server to store the telemetry spooled while it was down",
             context=lambda: f"count={counted.count()} base={base}\n{agent.log_tail()}")
    agent.kill()
    agent.start()
    counted.wait_count(base + k, what=f"the server to count {base + k} inferences")

    # One more inference fences the check: once it is counted, any resent batch had its chance.
    counted.infer()
    counted.wait_count(base + k + 1, what="the server to count the inference made after the agent restart")
    assert counted.count() == base + k + 1, (
        f"the server counted {counted.count() - base} inferences since the outage began, expected {k + 1}\n"
        f"{agent.log_tail()}")
