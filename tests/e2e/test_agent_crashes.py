"""SIGKILL the agent at random points of updates: it never serves a half-written model."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support import models
from tests.support.deployments import (
    FINAL_OUTCOMES, deploy, deploy_and_install, deployment_doc, device_entries, push, show, wait_outcomes,
    wait_serving,
)
from tests.support.processes import AgentProcess, ServerProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

KILLS = 16
MODEL_MB = 12.0
RATE_FLAG = "--download-rate-bps"
# Kill this long after the agent is launched: it takes ~1-1.5 s to start serving here,
# then downloads, verifies, installs and runs a 1 s trial.
KILL_AFTER_S = (0.6, 3.2)


def agent_flags() -> str:
    out = subprocess.run([sys.executable, "-m", "fleetcast.sdk.console", "agent", "--help"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


def saved_state(agent: AgentProcess) -> str:
    try:
        return str(json.loads((agent.data_dir / "state.json").read_text()).get("state"))
    except (OSError, ValueError):
        return "none"


def outcome(server: ServerProcess, deployment: str, device_id: str) -> str:
    return str((device_entries(deployment_doc(server, deployment)).get(device_id) or {}).get("outcome") or "")


@pytest.mark.timeout(480)
def test_agent_killed_during_download_and_install_ends_on_old_or_new_model(
    new_server, new_agent, tmp_path: Path
) -> None:
    # Throttle downloads when the agent can, so more kills land inside the download.
    rate = [RATE_FLAG, str(16 * 1024 * 1024)] if RATE_FLAG in agent_flags() else []
    server = new_server()
    agent: AgentProcess = new_agent(server, "dev-crash", extra_args=rate)

    def new_model(seed: int) -> tuple[str, str]:
        path = models.write(models.sized_model(MODEL_MB, seed=seed), tmp_path / f"m{seed}.onnx")
        return push(server, path, name="big").version, models.sha256_of(path)

    version, old = new_model(1)
    deploy_and_install(server, [agent], "big", version)
    version, new = new_model(2)
    deployment = deploy(server, "big", version=version, devices=[agent.device_id])

    seed = int(os.environ.get("FLEETCAST_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    landed: Counter[str] = Counter()
    held: Counter[str] = Counter()
    deployments = 1
    for kill in range(KILLS):
        if kill:
            agent.launch()  # not waiting for it to serve: a kill may land during its start too
        if kill % 2:
            time.sleep(rng.uniform(*KILL_AFTER_S))
        else:
            # The download-to-activate stretch lasts ~0.2 s here: aim inside it.
            wait_for(lambda: saved_state(agent) != "idle" or not agent.running, timeout_s=30, interval_s=0.005,
                     what="the agent to take up the update", context=agent.log_tail)
            time.sleep(rng.uniform(0.0, 0.25))
        agent.kill()
        landed[saved_state(agent)] += 1
        model_path = agent.active_model_path()
        assert model_path is not None, f"kill {kill} (seed {seed}): no active slot\n{agent.log_tail()}"
        digest = models.sha256_of(model_path)
        assert digest in (old, new), (
            f"kill {kill} (seed {seed}): the active slot {model_path} holds neither the model installed before "
            f"({old[:12]}) nor the one being deployed ({new[:12]}) but sha256 {digest[:12]}\n{agent.log_tail()}")
        manifest = agent.active_manifest() or {}
        assert manifest.get("sha256") == digest, (
            f"kill {kill} (seed {seed}): the active slot's manifest names sha256 {manifest.get('sha256')!r} "
            f"but its model file has {digest[:12]}\n{agent.log_tail()}")
        held["new" if digest == new else "old"] += 1
        if outcome(server, deployment, agent.device_id) in FINAL_OUTCOMES and kill < KILLS - 2:
            # That update survived its kills; start the next one so later kills land in an update too.
            assert outcome(server, deployment, agent.device_id) == "installed", show(deployment_doc(server, deployment))
            assert digest == new, f"deployment {deployment} installed but the active slot holds the old model"
            old = new
            version, new = new_model(3 + kill)
            deployment = deploy(server, "big", version=version, devices=[agent.device_id])
            deployments += 1

    agent.start()
    entries = wait_outcomes(server, deployment, devices=[agent.device_id], timeout_s=120, logs=agent.log_tail)
    assert entries[agent.device_id]["outcome"] == "installed", f"{show(entries)}\n{agent.log_tail()}"
    wait_serving(agent, "big", version)
    assert models.sha256_of(agent.active_model_path()) == new
    print(f"seed={seed} rate_limited={bool(rate)} deployments={deployments} "
          f"kills landed in states {dict(landed)}; active slot held {dict(held)}")
