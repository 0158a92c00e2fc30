"""The agent's bridge settings on its command line and in its config."""

from __future__ import annotations

import pytest

from fleetcast.agent import cli
from fleetcast.agent.config import ConfigError, load

BASE = {"server": "127.0.0.1:8471", "data_dir": "/tmp/x", "device_id": "cam-01",
        "hardware_class": "x86-cpu", "trust_root": "trust-root.json"}


def test_repeated_bridge_origins_reach_the_config_in_order() -> None:
    args = cli.run_parser().parse_args([
        "--server", "127.0.0.1:1", "--data", "/tmp/x", "--device-id", "d", "--hardware", "x86-cpu",
        "--trust-root", "t.json", "--bridge-allow-origin", "https://app.example",
        "--bridge-allow-origin", "https://partner.example methods=run rate=5", "--bridge-port", "8765"])
    cfg = load(args, {})
    assert cfg.bridge_allow_origins == ("https://app.example", "https://partner.example methods=run rate=5")
    assert cfg.bridge_port == 8765


def test_no_origin_means_no_bridge() -> None:
    assert load(BASE, {}).bridge_allow_origins == ()


@pytest.mark.parametrize("origins, port, words", [
    (("https://*.example",), 0, "wildcard"),
    (("app.example",), 0, "http:// or https://"),
    (("https://a", "https://a"), 0, "twice"),
    (("https://a",), 70000, "--bridge-port"),
])
def test_bad_bridge_settings_are_refused_with_a_message(origins: tuple[str, ...], port: int, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load({**BASE, "bridge_allow_origins": origins, "bridge_port": port}, {})


def test_agent_command_line_exits_2_on_a_bad_origin(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["agent", "--server", "127.0.0.1:1", "--data", "/tmp/x", "--device-id", "d",
                     "--hardware", "x86-cpu", "--trust-root", "t.json", "--bridge-allow-origin", "https://*.example"])
    assert code == 2 and "wildcards are not allowed" in capsys.readouterr().err
