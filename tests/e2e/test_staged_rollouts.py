"""Staged rollouts with real agents: canary per cohort, abort and revert where a version
hurts, a good version completing, no traffic pausing, undo restoring the previous bytes.

The agents all run on this machine's CPU, so "a version slower on one cohort" is made
by the cohorts' workloads: the rk3399 devices run batches of 256 rows, the x86 device
one row. Version 2 has a hidden layer 64 times wider than version 1: about as fast on
one row (the call's overhead dominates), several times slower on 256 rows. The agents
measure and report their real onnxruntime latencies; the gates compare each cohort's
canary with its own control group.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import models
from tests.support.deployments import deploy_and_install, push, wait_serving
from tests.support.processes import AgentProcess, ServerProcess
from tests.support.waiting import wait_for

ROWS = {"rk-0": 256, "rk-1": 256, "x86-0": 1}
GATE = "latency_p95 <= 2x control"      # the wide version is >5x slower on 256 rows


@contextmanager
def traffic(agents: list[AgentProcess]) -> Iterator[None]:
    """Each agent serves its cohort's workload, continuously, until the block ends."""
    stop = threading.Event()

    def serve(agent: AgentProcess) -> None:
        x = models.sample_input(rows=ROWS[agent.device_id])
        while not stop.is_set():
            try:
                with agent.inference_client() as client:
                    while not stop.is_set():
                        client.infer({"input": x})
            except Exception:        # a model swap in progress, the agent restarting: try again
                stop.wait(0.05)

    threads = [threading.Thread(target=serve, args=(a,), daemon=True) for a in agents]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)


def _push(server: ServerProcess, tmp: Path, model: Any, version: str) -> str:
    path = models.write(model, tmp / f"v{version}.onnx")
    push(server, path, name="digits", version=version)
    return models.sha256_of(path)


def _wait_rollout(server: ServerProcess, rollout_id: str, done: Callable[[dict[str, Any]], bool], what: str,
                  agents: list[AgentProcess], timeout_s: float = 40) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        nonlocal last
        with server.client() as fc:
            last = fc.get_rollout(rollout_id).raw
        return last if done(last) else None

    return wait_for(probe, timeout_s=timeout_s, interval_s=0.3, what=what,
                    context=lambda: f"{last.get('state')} {last.get('stages')}\n{last.get('log', [])[-4:]}\n"
                                    + "\n".join(a.log_tail(15) for a in agents))


def _served(agent: AgentProcess) -> tuple[str, str]:
    status = agent.status()
    return str(status.get("version") or ""), str(status.get("sha256") or "")


def test_canary_abort_completion_inconclusive_pause_and_undo(
        new_server: Callable[..., ServerProcess], new_agent: Callable[..., AgentProcess], tmp_path: Path) -> None:
    server = new_server()
    agents = [new_agent(server, "rk-0", hardware="rk3399"), new_agent(server, "rk-1", hardware="rk3399"),
              new_agent(server, "x86-0")]
    by_id = {a.device_id: a for a in agents}
    sha = {"1": _push(server, tmp_path, models.tiny_classifier(seed=1), "1")}
    deploy_and_install(server, agents, "digits", "1")
    sha["2"] = _push(server, tmp_path, models._two_layer(2, 16, 512, 4, "wide"), "2")
    sha["3"] = _push(server, tmp_path, models.tiny_classifier(seed=3), "3")
    # A version of its own for the silent rollout: the store's windows are whole minutes, so
    # a short soak also reads the minute before it, when version 3 was busy.
    sha["4"] = _push(server, tmp_path, models.tiny_classifier(seed=4), "4")
    options = {"stages": "1,100%", "soak_s": 8, "gates": [GATE, "serving >= 1"], "min_inferences": 30,
               "device_timeout_s": 30, "evaluation_interval_s": 0.5}

    # 1. Version 2 hurts the rk3399 cohort only: its canary is reverted, the rest never get it.
    with traffic(agents), server.client() as fc:
        wait_for(lambda: all(_served(a)[0] == "1" for a in agents), timeout_s=20, what="every agent on 1")
        r = fc.start_rollout("digits", version="2", options=options)
        # ended, and the canary sent back has reported the previous version again
        doc = _wait_rollout(server, r.id, lambda d: d["final"] and "reverting" not in d["devices"],
                            "the rollout of 2 to end and its canary to be reverted", agents)
    assert doc["state"] == "aborted", doc["log"][-3:]
    failed = next(e for e in doc["log"] if e["event"] == "gate_failed")
    soaked = next(e for e in doc["log"] if e["event"] == "stage_settled")
    breach = [c for c in failed["snapshot"]["checks"] if c["verdict"] == "fail"]
    assert [c["cohort"].split("/")[0] for c in breach] == ["rk3399"] and breach[0]["value"] > 2
    # A look with enough data on both sides decides during the soak, not at its end.
    assert failed["at"] - soaked["at"] < options["soak_s"]
    canary_rk = next(c for k, c in doc["stages"][0]["cohorts"].items() if k.startswith("rk3399"))
    assert canary_rk == {"reverted": 1} and doc["stages"][1]["cohorts"]
    assert all(set(c) == {"planned"} for c in doc["stages"][1]["cohorts"].values())   # never received it
    for device_id in ("rk-0", "rk-1"):
        wait_serving(by_id[device_id], "digits", "1")
    assert _served(by_id["x86-0"]) == ("2", sha["2"])          # its cohort was not hurt: left as it was

    # 2. A good version completes every stage; undo returns each device to its previous bytes.
    before = {a.device_id: _served(a) for a in agents}
    with traffic(agents), server.client() as fc:
        r = fc.start_rollout("digits", version="3", options={**options, "soak_s": 2})
        doc = _wait_rollout(server, r.id, lambda d: d["final"], "the rollout of 3 to end", agents)
        assert doc["state"] == "completed" and doc["healthy"], doc["log"][-3:]
        assert {a.device_id: _served(a) for a in agents} == {d: ("3", sha["3"]) for d in by_id}
        fc.rollout_command(r.id, "undo")
        wait_for(lambda: {a.device_id: _served(a) for a in agents} == before, timeout_s=30,
                 what=f"every device back on {before}", context=lambda: "\n".join(a.log_tail(15) for a in agents))

    # 3. No inference traffic during the soak: the stage is inconclusive and the rollout pauses.
    with server.client() as fc:
        r = fc.start_rollout("digits", version="4", options={**options, "soak_s": 2})
        doc = _wait_rollout(server, r.id, lambda d: d["state"] != "running", "the silent rollout to stop", agents)
        assert doc["state"] == "paused" and doc["stages"][0]["state"] == "inconclusive", doc["log"][-3:]
        no_data = [c for c in doc["stages"][0]["checks"] if c["verdict"] == "no_data"]
        assert no_data and all(c["inferences"] < 30 for c in no_data)
        assert fc.rollout_command(r.id, "abort").state == "aborted"
