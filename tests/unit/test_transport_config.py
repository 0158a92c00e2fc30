"""Plaintext only on loopback and only when asked for; secrets from files, not argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetcast.agent import cli as agent_cli
from fleetcast.agent.config import ConfigError, load
from fleetcast.server import config as server_config
from fleetcast.server.errors import InvalidRequest

BASE = {"server": "127.0.0.1:8471", "data_dir": "/tmp/d", "device_id": "d1", "hardware_class": "x86-cpu",
        "trust_root": "/tmp/t.json"}


@pytest.mark.parametrize("http,grpc", [("0.0.0.0:8470", "127.0.0.1:8471"), ("127.0.0.1:8470", "10.1.2.3:8471")])
def test_the_server_refuses_plaintext_off_loopback(tmp_path: Path, http: str, grpc: str) -> None:
    with pytest.raises(InvalidRequest, match="only on loopback"):
        server_config.load(data_dir=tmp_path, http=http, grpc=grpc, insecure_loopback_plaintext=True)
    assert server_config.load(data_dir=tmp_path, http=http, grpc=grpc).tls
    assert not server_config.load(data_dir=tmp_path, http="127.0.0.1:1", grpc="[::1]:2",
                                  insecure_loopback_plaintext=True).tls


def test_the_agent_refuses_plaintext_to_a_remote_server() -> None:
    with pytest.raises(ConfigError, match="only to a loopback"):
        load({**BASE, "server": "fleet.example.internal:8471", "insecure_loopback_plaintext": True}, {})
    assert load({**BASE, "insecure_loopback_plaintext": True}, {}).insecure_loopback_plaintext
    assert load(BASE, {}).server_ca_path == Path("/tmp/server-ca.pem")


def test_the_enroll_token_comes_from_a_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("fcet_abc\n")
    token.chmod(0o600)
    assert load({**BASE, "enroll_token_file": token}, {}).enroll_token == "fcet_abc"
    with pytest.raises(ConfigError, match="enroll-token-file"):
        load({**BASE, "enroll_token_file": tmp_path / "missing"}, {})


def test_an_enroll_token_on_the_command_line_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = agent_cli.main(["agent", "--server", "127.0.0.1:1", "--data", str(tmp_path / "d"), "--device-id", "d1",
                         "--hardware", "x86-cpu", "--trust-root", str(tmp_path / "t.json"), "--enroll-token=s3cret"])
    assert rc == 2 and "--enroll-token-file" in capsys.readouterr().err
