"""SIGKILL the agent at random points of an update: it never serves a half-written model."""

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
from tests.support.deployments import deploy, deploy_and_install, push, wait_outcomes, wait_serving, show
from tests.support.processes import AgentProcess

pytestmark = pytest.mark.e2e

KILLS = 15
MODEL_MB = 8.0
RATE_FLAG = "--download-rate-bps"


def agent_flags() -> str:
    out = subprocess.run([sys.executable, "-m", "fleetcast.sdk.console", "agent", "--help"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


def saved_state(agent: AgentProcess) -> str:
    try:
        return str(json.loads((agent.data_dir / "state.json").read_text()).get("state"))
    except (OSError, ValueError):
        return "none"


@pytest.mark.timeout(480)
def test_agent_killed_during_download_and_install_ends_on_old_or_new_model(
    new_server, new_agent, tmp_path: Path
) -> None:
    # Throttle downloads when the agent can, so kills land inside the download too.
    rate = [RATE_FLAG, str(8 * 1024 * 1024)] if RATE_FLAG in agent_flags() else []
    server = new_server()
    agent: AgentProcess = new_agent(server, "dev-crash", extra_args=rate)
    old = models.write(models.sized_model(MODEL_MB, seed=1), tmp_path / "old.onnx")
    new = models.write(models.sized_model(MODEL_MB, seed=2), tmp_path / "new.onnx")
    genuine = {models.sha256_of(old): "old", models.sha256_of(new): "new"}

    v1 = push(server, old, name="big").version
    deploy_and_install(server, [agent], "big", v1)
    v2 = push(server, new, name="big").version
    deployment = deploy(server, "big", version=v2, devices=[agent.device_id])

    seed = int(os.environ.get("FLEETCAST_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    landed: Counter[str] = Counter()
    held: Counter[str] = Counter()
    for kill in range(KILLS):
        if kill:
            agent.launch()  # not waiting for it to serve: a kill may land during its start too
        time.sleep(rng.uniform(0.2, 3.5))
        agent.kill()
        landed[saved_state(agent)] += 1
        model_path = agent.active_model_path()
        assert model_path is not None, f"kill {kill} (seed {seed}): no active slot\n{agent.log_tail()}"
        digest = models.sha256_of(model_path)
        assert digest in genuine, (
            f"kill {kill} (seed {seed}): the active slot {model_path} holds neither the old nor the new "
            f"model (sha256 {digest})\n{agent.log_tail()}")
        held[genuine[digest]] += 1

    agent.start()
    entries = wait_outcomes(server, deployment, devices=[agent.device_id], timeout_s=120, logs=agent.log_tail)
    assert entries[agent.device_id]["outcome"] == "installed", f"{show(entries)}\n{agent.log_tail()}"
    wait_serving(agent, "big", v2)
    assert models.sha256_of(agent.active_model_path()) == models.sha256_of(new)
    print(f"seed={seed} rate_limited={bool(rate)} kills landed in states {dict(landed)}; active slot held {dict(held)}")
