"""What an operator does in the scenarios: push, deploy, wait for outcomes, and ask a
device what it serves. Failures show the deployment document and the process logs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.support import models
from tests.support.processes import AgentProcess, ServerProcess
from tests.support.waiting import wait_for

# Per-device outcomes that end a device's part in a deployment (proto StatusReport.outcome).
FINAL_OUTCOMES = frozenset({"installed", "failed", "rolled_back", "superseded", "cancelled"})


def push(server: ServerProcess, path: Path, *, name: str, version: str | None = None) -> Any:
    with server.client() as fc:
        return fc.push_model(path, name=name, version=version)


def deploy(server: ServerProcess, model: str, *, version: str | None, devices: Iterable[str]) -> str:
    """Deploys to the named devices; returns the deployment id."""
    with server.client() as fc:
        return fc.deploy(model, version=version, to="device:" + ",".join(devices)).id


def deployment_doc(server: ServerProcess, deployment_id: str) -> dict[str, Any]:
    with server.client() as fc:
        return dict(fc.get_deployment(deployment_id).raw)


def device_entries(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(d.get("device_id")): d for d in doc.get("devices") or ()}


def show(doc: Any) -> str:
    return json.dumps(doc, indent=1, sort_keys=True, default=str)


def wait_outcomes(
    server: ServerProcess,
    deployment_id: str,
    *,
    devices: Sequence[str],
    timeout_s: float,
    logs: Callable[[], str] = lambda: "",
) -> dict[str, dict[str, Any]]:
    """Waits until every named device has a final outcome; returns {device_id: entry}."""
    last: dict[str, Any] = {}

    def probe() -> dict[str, dict[str, Any]] | None:
        nonlocal last
        last = deployment_doc(server, deployment_id)
        entries = device_entries(last)
        if all(str((entries.get(d) or {}).get("outcome") or "") in FINAL_OUTCOMES for d in devices):
            return {d: entries[d] for d in devices}
        return None

    return wait_for(
        probe, timeout_s=timeout_s, interval_s=0.3,
        what=f"devices {list(devices)} to reach a final outcome in deployment {deployment_id}",
        context=lambda: f"deployment document:\n{show(last)}\n{server.log_tail(30)}\n{logs()}",
    )


def assert_installed(entries: dict[str, dict[str, Any]], logs: Callable[[], str] = lambda: "") -> None:
    not_installed = {d: e for d, e in entries.items() if e.get("outcome") != "installed"}
    assert not not_installed, f"devices did not install: {show(not_installed)}\n{logs()}"


def deploy_and_install(
    server: ServerProcess, agents: Sequence[AgentProcess], model: str, version: str, *, timeout_s: float = 90
) -> str:
    """Deploys `model@version` to the agents and asserts every one ends `installed`."""
    logs = lambda: "\n".join(a.log_tail(30) for a in agents)  # noqa: E731
    deployment = deploy(server, model, version=version, devices=[a.device_id for a in agents])
    entries = wait_outcomes(server, deployment, devices=[a.device_id for a in agents], timeout_s=timeout_s, logs=logs)
    assert_installed(entries, logs)
    return deployment


# what a device serves, through its local API


def serving(agent: AgentProcess) -> tuple[str, str]:
    """(model, version) the agent's local API says it serves; ("", "") for nothing."""
    status = agent.status()
    return str(status.get("model") or ""), str(status.get("version") or "")


def wait_serving(agent: AgentProcess, model: str, version: str, *, timeout_s: float = 30) -> None:
    wait_for(
        lambda: serving(agent) == (model, str(version)), timeout_s=timeout_s,
        what=f"{agent.label} to serve {model}@{version}", context=agent.log_tail,
    )


def infer_output(agent: AgentProcess, x: np.ndarray) -> np.ndarray:
    """Runs one inference through the agent's local API; returns the output "output"."""
    outputs = agent.infer({"input": x})
    assert "output" in outputs, f"{agent.label} answered outputs {list(outputs)}, expected 'output'"
    return np.asarray(outputs["output"])


def device_doc(server: ServerProcess, device_id: str) -> Any:
    with server.client() as fc:
        return fc.get_device(device_id)


def inferences_of(server: ServerProcess, device_id: str, model: str, version: str) -> int:
    """The server's count of inferences the device reported for model@version."""
    device = device_doc(server, device_id)
    return sum(s.inferences for s in device.stats if s.model == model and s.version == str(version))


class CountedModel:
    """A model installed and serving on one agent, with the server's count of its inferences.

    `base` is the count once whatever the device ran while installing (smoke test,
    trial) and one first inference have reached the server, so a scenario can count
    from there.
    """

    def __init__(self, server: ServerProcess, agent: AgentProcess, path: Path, *, name: str) -> None:
        self.server, self.agent, self.name = server, agent, name
        self.version = push(server, path, name=name).version
        deploy_and_install(server, [agent], name, self.version)
        wait_serving(agent, name, self.version)
        self.x = models.sample_input()
        infer_output(agent, self.x)
        wait_for(lambda: self.count() >= 1, timeout_s=30, what=f"the server to count a first inference of {name}",
                 context=lambda: f"{server.log_tail(20)}\n{agent.log_tail(20)}")
        self.base = self.count()

    def count(self) -> int:
        return inferences_of(self.server, self.agent.device_id, self.name, self.version)

    def infer(self, times: int = 1) -> None:
        for _ in range(times):
            infer_output(self.agent, self.x)

    def wait_count(self, expected: int, what: str) -> None:
        wait_for(lambda: self.count() >= expected, timeout_s=60, what=what,
                 context=lambda: f"count={self.count()} expected={expected}\n{self.agent.log_tail()}")
