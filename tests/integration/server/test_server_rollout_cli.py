"""`fleetcast rollout` and `deploy undo` against a real server: plan, start, status,
the verbs, the 409 for an illegal one, and `status --watch` failing a CI job."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleetcast.sdk import cli
from tests.integration.server.conftest import RunningServer
from tests.support import models


def _cli(server: RunningServer, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = cli.main([*argv, "--json", "--data", str(server.data)], environ={})
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def test_rollout_commands_from_plan_to_undo(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    for i, group in enumerate(("cli-a", "cli-a", "cli-b")):
        server.enroll(f"cli-{i}", group=group)
    for version in ("1", "2"):
        status, _ = server.upload("cli-model", {"model": models.to_bytes(models.tiny_classifier(seed=int(version))),
                                                "version": version})
        assert status == 201
    code, plan, _ = _cli(server, capsys, "rollout", "plan", "cli-model@2", "--to", "device:cli-0,cli-1,cli-2",
                         "--stages", "1,100%")
    assert code == 0 and plan["devices"] == 3 and plan["stages"][0]["adds"] == 1   # one cohort: x86-cpu
    code, started, _ = _cli(server, capsys, "rollout", "start", "cli-model@2", "--to", "device:cli-0,cli-1,cli-2",
                            "--stages", "1,100%", "--soak", "60s", "--gate", "error_rate <= 0.01",
                            "--min-inferences", "5")
    assert code == 0 and started["state"] == "running" and started["spec"]["gates"] == ["error_rate <= 0.01"]
    rollout = started["id"]
    code, paused, _ = _cli(server, capsys, "rollout", "pause", rollout)
    assert code == 0 and paused["state"] == "paused"
    code, _, err = _cli(server, capsys, "rollout", "pause", rollout)
    assert code == 1 and "is paused and cannot pause" in err and "409" in err
    code, aborted, _ = _cli(server, capsys, "rollout", "abort", rollout)
    assert code == 0 and aborted["state"] == "aborted"
    code, _, err = _cli(server, capsys, "rollout", "status", rollout, "--watch", "--timeout", "5")
    assert code == 1 and "ended aborted" in err                 # a CI job gated on it fails
    code, listed, _ = _cli(server, capsys, "rollout", "list")
    assert code == 0 and [r["id"] for r in listed["rollouts"]] == [rollout]
    code, undone, _ = _cli(server, capsys, "rollout", "undo", rollout)
    assert code == 0 and undone["state"] == "rolled_back"

    code, deployed, _ = _cli(server, capsys, "deploy", "cli-model@1", "--to", "group:cli-b")
    code, reverted, _ = _cli(server, capsys, "deploy", "undo", deployed["id"])
    assert code == 0 and reverted["status"] == "reverted"
    code, _, err = _cli(server, capsys, "deploy", "undo", deployed["id"])
    assert code == 1 and "nothing to undo" in err
