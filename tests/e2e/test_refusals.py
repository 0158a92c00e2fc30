"""What a device refuses, and that it keeps serving the model it had: a tampered
artifact, an older signed assignment, expired metadata, a model failing its smoke test."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support import models
from tests.support.deployments import (
    deploy, deploy_and_install, deployment_doc, device_entries, infer_output, push, serving, show,
    wait_outcomes, wait_serving,
)
from tests.support.processes import AgentProcess, ServerProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


def install_first(server: ServerProcess, agent: AgentProcess, tmp_path: Path, name: str) -> tuple[str, Path]:
    """Puts a good model on the device; returns (version, file)."""
    path = models.write(models.tiny_classifier(100), tmp_path / f"{name}-good.onnx")
    version = push(server, path, name=name).version
    deploy_and_install(server, [agent], name, version)
    wait_serving(agent, name, version)
    return version, path


def assert_still_serves(agent: AgentProcess, name: str, version: str, path: Path) -> None:
    assert serving(agent) == (name, version), f"{agent.label} no longer serves {name}@{version}\n{agent.log_tail()}"
    assert models.sha256_of(agent.active_model_path()) == models.sha256_of(path)
    x = models.sample_input(rows=2)
    assert np.isfinite(infer_output(agent, x)).all()


def blob_file(server: ServerProcess, sha256: str) -> Path:
    found = [p for p in server.blobs_dir.rglob("*") if p.is_file() and p.name.startswith(sha256)]
    assert len(found) == 1, f"expected one blob named {sha256} under {server.blobs_dir}, found {found}"
    return found[0]


def final_failure(server: ServerProcess, agent: AgentProcess, deployment: str) -> dict:
    entry = wait_outcomes(server, deployment, devices=[agent.device_id], timeout_s=90, logs=agent.log_tail)[agent.device_id]
    assert entry["outcome"] in {"failed", "rolled_back"}, f"expected a refusal: {show(entry)}\n{agent.log_tail()}"
    return entry


def test_artifact_altered_on_server_disk_is_refused_and_reported_and_old_model_keeps_serving(
    shared_server: ServerProcess, new_agent, tmp_path: Path
) -> None:
    agent = new_agent(shared_server, "dev-tamper")
    good_version, good = install_first(shared_server, agent, tmp_path, "tamper")
    bad = models.write(models.tiny_classifier(101), tmp_path / "bad.onnx")
    version = push(shared_server, bad, name="tamper").version
    blob = blob_file(shared_server, models.sha256_of(bad))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.chmod(0o600)
    blob.write_bytes(bytes(data))

    entry = final_failure(shared_server, agent, deploy(shared_server, "tamper", version=version, devices=[agent.device_id]))
    reason = str(entry.get("reason") or "").lower()
    assert any(word in reason for word in ("sha256", "hash", "digest")), f"reason does not name the hash: {show(entry)}"
    assert_still_serves(agent, "tamper", good_version, good)


def test_model_failing_its_smoke_test_is_rolled_back_and_reported_and_old_model_keeps_serving(
    shared_server: ServerProcess, new_agent, tmp_path: Path
) -> None:
    agent = new_agent(shared_server, "dev-smoke")
    good_version, good = install_first(shared_server, agent, tmp_path, "smoke")
    noisy = models.write(models.nondeterministic_model(), tmp_path / "noisy.onnx")
    version = push(shared_server, noisy, name="smoke").version

    entry = final_failure(shared_server, agent, deploy(shared_server, "smoke", version=version, devices=[agent.device_id]))
    assert "smoke" in str(entry.get("reason") or "").lower(), f"reason does not name the smoke test: {show(entry)}"
    assert_still_serves(agent, "smoke", good_version, good)


def copy_db(src: Path, dest: Path) -> None:
    """The SQLite database with its journal files, taken while the server is stopped."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in src.parent.glob(src.name + "*"):
        shutil.copy2(p, dest / p.name)


def restore_db(saved: Path, db: Path) -> None:
    for p in db.parent.glob(db.name + "*"):
        p.unlink()
    for p in saved.iterdir():
        shutil.copy2(p, db.parent / p.name)


def refusal_evidence(server: ServerProcess, agent: AgentProcess, deployments: list[str], words: tuple[str, ...]) -> dict[str, str]:
    """Where a refusal naming one of `words` shows: the server's deployment rows (the
    report reached the server), the agent's saved state, or its local API's last_error
    (a device that refuses metadata cannot always trust the deployment id it names)."""
    found: dict[str, str] = {}
    hit = lambda text: any(w in text.lower() for w in words)  # noqa: E731
    for d in deployments:
        reason = str((device_entries(deployment_doc(server, d)).get(agent.device_id) or {}).get("reason") or "")
        if hit(reason):
            found[f"deployment {d}"] = reason
    with server.client() as fc:
        last_error = (fc.get_device(agent.device_id).raw.get("last_error") or {}).get("reason") or ""
    if hit(last_error):
        found["server device last_error"] = last_error
    try:
        reason = str(json.loads((agent.data_dir / "state.json").read_text()).get("reason") or "")
    except (OSError, ValueError):
        reason = ""
    if hit(reason):
        found["agent state.json"] = reason
    try:
        last_error = str(agent.status().get("last_error") or "")
    except Exception as e:  # noqa: BLE001 - the local API is one source among several
        last_error = f"(local API: {e})"
    if hit(last_error):
        found["agent local API last_error"] = last_error
    return found


def wait_refusal(server: ServerProcess, agent: AgentProcess, deployments: list[str], words: tuple[str, ...], what: str) -> dict[str, str]:
    evidence = wait_for(
        lambda: refusal_evidence(server, agent, deployments, words), timeout_s=60, what=what,
        context=lambda: "\n".join(show(deployment_doc(server, d)) for d in deployments) + "\n" + agent.log_tail(),
    )
    print(f"{what}: {show(evidence)}")
    return evidence


def test_older_signed_assignment_served_back_is_refused_and_newer_model_keeps_serving(
    new_server, new_agent, tmp_path: Path
) -> None:
    server = new_server()
    agent = new_agent(server, "dev-replay")
    old_version, _ = install_first(server, agent, tmp_path, "replay")
    server.stop()
    copy_db(server.db_path, tmp_path / "saved-db")
    server.start()

    newer = models.write(models.tiny_classifier(102), tmp_path / "newer.onnx")
    new_version = push(server, newer, name="replay").version
    deploy_and_install(server, [agent], "replay", new_version)
    wait_serving(agent, "replay", new_version)

    # The server now serves the device's older signed director metadata (and all else) again.
    server.stop()
    restore_db(tmp_path / "saved-db", server.db_path)
    server.start()
    with server.client() as fc:
        deployments = [d.id for d in fc.list_deployments()]
    wait_refusal(server, agent, deployments, ("rollback", "older than"),
                 what="the device to refuse the older signed metadata")
    # Reported: the refusal names a deployment that already closed, so it shows on the device.
    wait_for(lambda: "server device last_error" in refusal_evidence(server, agent, deployments, ("rollback",)),
             timeout_s=30, what="the refusal to reach the server's device document",
             context=lambda: agent.log_tail())
    assert_still_serves(agent, "replay", new_version, newer)


def test_expired_metadata_is_refused_and_current_model_keeps_serving(new_server, new_agent, tmp_path: Path) -> None:
    server = new_server(extra_args=["--timestamp-expiry-s", "3", "--refresh-interval-s", "0"])
    agent = new_agent(server, "dev-expiry")
    v1, first = install_first(server, agent, tmp_path, "expiry")
    agent.stop()
    second = models.write(models.tiny_classifier(103), tmp_path / "second.onnx")
    v2 = push(server, second, name="expiry").version
    deployment = deploy(server, "expiry", version=v2, devices=[agent.device_id])
    time.sleep(3.5)  # part of the scenario: let the signed timestamp expire

    agent.start()
    wait_refusal(server, agent, [deployment], ("expired",), what="the device to refuse expired metadata")
    # Reported: the deployment's row for this device names the expiry.
    wait_for(lambda: f"deployment {deployment}" in refusal_evidence(server, agent, [deployment], ("expired",)),
             timeout_s=30, what="the deployment to show the device's expiry refusal",
             context=lambda: f"{show(deployment_doc(server, deployment))}\n{agent.log_tail()}")
    assert_still_serves(agent, "expiry", v1, first)
