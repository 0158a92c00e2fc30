"""What a restarted agent serves when its data dir was written to while it was down:
a slot rewritten with another model and a matching manifest, an oversized `active`
pointer, a corrupt `state.json`. Nothing on disk is believed without the signed
image metadata; nothing crashes; every refusal is reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support import models
from tests.support.deployments import deploy_and_install, device_doc, infer_output, push, serving, wait_serving
from tests.support.processes import AgentProcess, ServerProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


def install(server: ServerProcess, agent: AgentProcess, tmp_path: Path, name: str, seed: int) -> str:
    path = models.write(models.tiny_classifier(seed), tmp_path / f"{name}-{seed}.onnx")
    version = push(server, path, name=name).version
    deploy_and_install(server, [agent], name, version)
    wait_serving(agent, name, version)
    return version


def rewrite_active_slot(agent: AgentProcess, tmp_path: Path, seed: int) -> str:
    """Replaces the active slot's model and its manifest as someone with disk access would."""
    slot_dir = agent.data_dir / "slots" / str(agent.active_slot())
    forged = models.write(models.tiny_classifier(seed), tmp_path / f"forged-{seed}.onnx")
    (slot_dir / "model.onnx").write_bytes(forged.read_bytes())
    manifest = json.loads((slot_dir / "manifest.json").read_text())
    sha256 = models.sha256_of(forged)
    manifest.update(sha256=sha256, length=forged.stat().st_size, target_path=f"artifacts/{sha256}")
    (slot_dir / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    return sha256


def server_last_error(server: ServerProcess, device_id: str) -> str:
    return str((device_doc(server, device_id).raw.get("last_error") or {}).get("reason") or "")


def wait_server_last_error(server: ServerProcess, agent: AgentProcess, words: tuple[str, ...]) -> str:
    return wait_for(
        lambda: (lambda e: e if any(w in e for w in words) else None)(server_last_error(server, agent.device_id)),
        timeout_s=30, what=f"the server to hold {agent.label}'s start-up report naming {words}",
        context=agent.log_tail)


def test_rewritten_active_model_and_manifest_is_not_served_and_the_other_verified_slot_is(
    shared_server: ServerProcess, new_agent, tmp_path: Path
) -> None:
    agent = new_agent(shared_server, "dev-start-forged")
    first = install(shared_server, agent, tmp_path, "startforged", 300)
    second = install(shared_server, agent, tmp_path, "startforged", 301)
    forged_slot = agent.active_slot()
    agent.stop()
    forged = rewrite_active_slot(agent, tmp_path, 302)

    agent.start()
    # Start-up refused the rewritten slot and served the other one, which verified. The
    # agent may already have gone on to re-install its assigned version (genuine bytes
    # from the server) by the time we ask: the forged bytes are never served either way.
    log = agent.log_path.read_text(errors="replace").rsplit("===== start #", 1)[-1]
    assert "startup active --rejected--> other" in log, agent.log_tail()
    assert f"serving model=startforged version={first} slot=" in log, agent.log_tail()
    assert "not a target of the image repository" in log, agent.log_tail()
    status = agent.status()
    assert status["model"] == "startforged" and status["version"] in (first, second), status
    assert status["sha256"] != forged
    assert np.isfinite(infer_output(agent, models.sample_input(rows=1))).all()
    reason = wait_server_last_error(shared_server, agent, ("image repository",))
    assert forged_slot is not None and f"slot {forged_slot}" in reason
    assert second != first


def test_rewritten_only_slot_is_refused_and_the_agent_keeps_running_and_reports_why(
    shared_server: ServerProcess, new_agent, tmp_path: Path
) -> None:
    agent = new_agent(shared_server, "dev-start-refuse")
    install(shared_server, agent, tmp_path, "startrefuse", 310)
    agent.stop()
    rewrite_active_slot(agent, tmp_path, 311)

    agent.start()
    assert serving(agent) == ("", ""), agent.log_tail()
    assert agent.running
    assert "image repository" in agent.status()["last_error"]
    wait_server_last_error(shared_server, agent, ("image repository",))
    assert "serving nothing" in agent.log_tail(200)


def test_oversized_active_pointer_does_not_crash_the_agent_and_the_verified_slot_serves(
    shared_server: ServerProcess, new_agent, tmp_path: Path
) -> None:
    agent = new_agent(shared_server, "dev-start-pointer")
    version = install(shared_server, agent, tmp_path, "startpointer", 320)
    slot = agent.active_slot()
    agent.stop()
    (agent.data_dir / "active").write_bytes(b"a" * (64 * 1024 * 1024))

    agent.start()
    assert serving(agent) == ("startpointer", version), agent.log_tail()
    assert (agent.data_dir / "active").read_bytes() == str(slot).encode(), "the pointer was not repaired"
    assert "active pointer" in agent.status()["last_error"]
    wait_server_last_error(shared_server, agent, ("active pointer",))


def test_corrupt_state_file_is_reported_and_the_verified_model_keeps_serving(
    shared_server: ServerProcess, new_agent, tmp_path: Path
) -> None:
    agent = new_agent(shared_server, "dev-start-state")
    version = install(shared_server, agent, tmp_path, "startstate", 330)
    agent.stop()
    (agent.data_dir / "state.json").write_bytes(b'{"fleetcast_state": 1, "state": [[[' + b"[" * 100_000)

    agent.start()
    assert serving(agent) == ("startstate", version), agent.log_tail()
    assert "state file" in agent.status()["last_error"]
    reason = wait_server_last_error(shared_server, agent, ("state file",))
    assert "started idle" in reason
