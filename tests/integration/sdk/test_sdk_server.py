"""The operator SDK and CLI against a real server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fleetcast.sdk import AuthError, Client, InvalidRequestError, NotFoundError, cli
from tests.support.processes import ServerProcess

DIGITS = Path(__file__).resolve().parents[3] / "examples" / "digits" / "digits.onnx"


def test_push_show_download_and_errors_against_the_real_server(server: ServerProcess, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    with Client.from_data_dir(server.data_dir) as client:
        pushed = client.push_model(DIGITS, name="digits", progress=lambda s, t: seen.append((s, t)))
        listed = client.list_models()
        model = client.get_model("digits")
        path = client.download_model("digits", pushed.version, tmp_path)

        with pytest.raises(NotFoundError) as missing:
            client.get_version("digits", "999")
        with pytest.raises(InvalidRequestError, match="matches no enrolled device"):
            client.deploy("digits", to="all")
        with pytest.raises(NotFoundError, match="no-such-device"):
            client.deploy("digits", to="device:no-such-device")

    original = pushed.variant("original")
    assert original is not None and original.sha256 == hashlib.sha256(DIGITS.read_bytes()).hexdigest()
    assert seen[-1][0] == seen[-1][1] > DIGITS.stat().st_size
    assert [m.name for m in listed] == ["digits"]
    assert [v.version for v in model.versions] == [pushed.version]
    assert path.read_bytes() == DIGITS.read_bytes()
    assert missing.value.status == 404 and missing.value.message


def test_a_wrong_token_is_refused(server: ServerProcess) -> None:
    with Client(server.http, "not-the-token", ca=server.server_ca) as client, pytest.raises(AuthError):
        client.list_devices()


def test_cli_reads_the_data_dir_and_prints_json(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["model", "push", str(DIGITS), "--name", "cli-digits", "--version", "a1",
                     "--data", str(server.data_dir)], environ={}) == 0
    assert "cli-digits@a1" in capsys.readouterr().out

    assert cli.main(["model", "show", "cli-digits@a1", "--json", "--data", str(server.data_dir)],
                    environ={}) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "a1"

    assert cli.main(["device", "list", "--json", "--data", str(server.data_dir)], environ={}) == 0
    assert json.loads(capsys.readouterr().out) == {"devices": []}
