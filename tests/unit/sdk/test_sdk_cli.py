"""`fleetcast model|deploy|device` against the fake REST server (no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from tests.unit.sdk.sdk_fake_server import SERVER, TOKEN, FakeServer, device_doc

from fleetcast.sdk import cli

CONN = ["--server", SERVER, "--token", TOKEN]


def run(fake: FakeServer, *argv: str, environ: dict[str, str] | None = None) -> int:
    return cli.main(list(argv), environ=environ or {}, transport=httpx.MockTransport(fake))


@pytest.fixture
def pushed(fake: FakeServer, model_file: Path) -> FakeServer:
    fake.devices = {"cam-1": device_doc("cam-1"), "cam-2": device_doc("cam-2", hardware="rk3399")}
    assert run(fake, "model", "push", str(model_file), "--name", "digits", *CONN) == 0
    return fake


@pytest.mark.parametrize("command", [
    "model push", "model list", "model show", "deploy create", "deploy status", "deploy list",
    "deploy cancel", "deploy undo", "device list", "device show", "rollout start", "rollout plan", "rollout status",
    "rollout list", "rollout pause", "rollout resume", "rollout promote", "rollout abort", "rollout undo",
])
def test_every_command_has_an_example_in_its_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*command.split(), "--help"]) == 0
    out = capsys.readouterr().out
    assert "Example:\n  fleetcast " + command.split()[0] in out
    assert "--json" in out and "--verbose" in out and "--data DIR" in out


def test_model_push_prints_the_version_and_its_variants(
    fake: FakeServer, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(fake, "model", "push", str(model_file), "--name", "digits", "--version", "3",
               "--compress", "balanced,fastest", "--no-progress", *CONN)

    out = capsys.readouterr().out
    assert code == 0
    assert "digits@3" in out and "original" in out and "250.0 KiB" in out
    assert "input float32[?,64]" in out
    assert fake.uploads[0]["compress"][1] == b"balanced,fastest"


def test_model_push_json_prints_the_server_document(
    fake: FakeServer, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(fake, "model", "push", str(model_file), "--name", "digits", "--json", *CONN) == 0

    doc = json.loads(capsys.readouterr().out)
    assert doc["name"] == "digits" and doc["variants"][0]["variant"] == "original"


def test_model_push_progress_bar_goes_to_stderr(
    fake: FakeServer, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(fake, "model", "push", str(model_file), "--name", "digits", "--progress", *CONN) == 0

    captured = capsys.readouterr()
    assert "push digits" in captured.err and "100%" in captured.err
    assert "100%" not in captured.out


def test_model_push_of_a_missing_file_is_a_usage_error(
    fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(fake, "model", "push", str(tmp_path / "nope.onnx"), "--name", "digits", *CONN)

    assert code == 2
    assert "nope.onnx is not a file" in capsys.readouterr().err


def test_model_list_and_show(pushed: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run(pushed, "model", "list", *CONN) == 0
    listing = capsys.readouterr().out
    assert run(pushed, "model", "show", "digits@1", *CONN) == 0
    shown = capsys.readouterr().out

    assert listing.splitlines() == ["NAME    LATEST  VERSIONS", "digits  1       1"]
    assert "VARIANT" in shown
    assert ["size_bytes", "256000"] in [line.split() for line in shown.splitlines()]


def test_model_show_of_an_unknown_model_fails_with_the_servers_message(
    pushed: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(pushed, "model", "show", "nope", *CONN) == 1
    err = capsys.readouterr().err
    assert "fleetcast model show: error: model 'nope' is not in the registry" in err


def test_deploy_shorthand_waits_and_prints_each_device(
    pushed: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    def install(doc: dict) -> None:
        for d in doc["devices"]:
            d.update(state="committed", outcome="installed")
        doc["status"] = "succeeded"

    pushed.on_poll = install

    code = run(pushed, "deploy", "digits@1", "--to", "device:cam-1,cam-2", "--wait", *CONN)

    out = capsys.readouterr().out
    assert code == 0
    assert "succeeded" in out
    assert [line.split()[:3] for line in out.splitlines() if line.startswith("cam-")] == [
        ["cam-1", "committed", "installed"], ["cam-2", "committed", "installed"]]


def test_deploy_wait_exits_1_when_a_device_failed(
    pushed: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail_one(doc: dict) -> None:
        doc["devices"][0].update(state="rolled_back", outcome="rolled_back", reason="golden check failed")
        doc["devices"][1].update(state="committed", outcome="installed")

    pushed.on_poll = fail_one

    code = run(pushed, "deploy", "create", "digits", "--wait", *CONN)

    captured = capsys.readouterr()
    assert code == 1
    assert "golden check failed" in captured.out
    assert "1 of 2 devices failed" in captured.err


def test_deploy_wait_timeout_prints_the_last_state_and_fails(
    pushed: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(pushed, "deploy", "digits", "--wait", "--timeout", "0.01", *CONN)

    captured = capsys.readouterr()
    assert code == 1
    assert "cam-1" in captured.out and "did not finish within" in captured.err


def test_deploy_to_a_malformed_target_is_a_usage_error(
    pushed: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(pushed, "deploy", "digits", "--to", "cam-1", *CONN) == 2
    assert "use all, group:NAME or device:ID" in capsys.readouterr().err


def test_deploy_status_list_and_cancel(pushed: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(pushed, "deploy", "digits", "--json", *CONN) == 0
    dep_id = json.loads(capsys.readouterr().out)["id"]

    assert run(pushed, "deploy", "status", dep_id, *CONN) == 0
    assert "assigned" in capsys.readouterr().out
    assert run(pushed, "deploy", "list", *CONN) == 0
    assert "digits@1" in capsys.readouterr().out
    assert run(pushed, "deploy", "cancel", dep_id, *CONN) == 0
    assert "cancelled" in capsys.readouterr().out
    assert run(pushed, "deploy", "cancel", dep_id, *CONN) == 1
    assert "is cancelled" in capsys.readouterr().err


def test_device_list_shows_what_each_device_runs_and_how_it_serves(
    pushed: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert run(pushed, "device", "list", *CONN) == 0

    header, first, _ = capsys.readouterr().out.splitlines()
    assert header.split() == ["DEVICE", "HARDWARE", "BACKENDS", "ACTIVE", "STATE", "LIVENESS", "P50/P95", "MS",
                              "INFERENCES", "ERRORS", "LAST", "SEEN"]
    assert first.split()[:9] == ["cam-1", "x86-cpu", "onnxruntime", "digits@1", "serving", "online", "0.42/1.3",
                                 "120", "2"]


def test_device_list_shows_only_the_active_versions_figures(
    pushed: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = pushed.devices["cam-1"]
    doc.update(active_model="digits@2", serving=None, liveness={"state": "late"})  # v2 has not reported yet
    capsys.readouterr()
    assert run(pushed, "device", "list", *CONN) == 0

    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[3:6] == ["digits@2", "serving", "late"]
    assert "0.42/1.3" not in row and "120" not in row  # v1's latency and counts are not shown beside v2


def test_device_show_json(pushed: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run(pushed, "device", "show", "cam-2", "--json", *CONN) == 0
    assert json.loads(capsys.readouterr().out)["hardware_class"] == "rk3399"


def test_connection_comes_from_the_environment(pushed: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"FLEETCAST_SERVER": SERVER, "FLEETCAST_TOKEN": TOKEN}
    assert run(pushed, "device", "list", environ=env) == 0


def test_connection_comes_from_a_data_dir(
    pushed: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "server.json").write_text(json.dumps({"http": SERVER}))
    (data / "operator-token").write_text(TOKEN)
    assert run(pushed, "model", "list", "--data", str(data)) == 0


def test_token_file_is_read(pushed: FakeServer, tmp_path: Path) -> None:
    (tmp_path / "tok").write_text(TOKEN + "\n")
    assert run(pushed, "model", "list", "--server", SERVER, "--token-file", str(tmp_path / "tok")) == 0


def test_no_server_is_a_usage_error_saying_how_to_name_one(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(fake, "device", "list") == 2
    assert "pass --server URL, set FLEETCAST_SERVER, or --data DIR" in capsys.readouterr().err


def test_a_wrong_token_fails_with_exit_1(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "device", "list", "--server", SERVER, "--token", "wrong") == 1
    assert "wrong operator token" in capsys.readouterr().err
