"""The agent's configuration and its command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetcast.agent import cli
from fleetcast.agent.config import AgentConfig, ConfigError, load

BASE = {"server": "127.0.0.1:8471", "data_dir": "/tmp/x", "device_id": "cam-01",
        "hardware_class": "x86-cpu", "trust_root": "trust-root.json"}


def test_defaults_follow_the_documented_units() -> None:
    cfg = load(BASE, {})
    assert (cfg.trial_s, cfg.poll_interval_s, cfg.telemetry_interval_s) == (10.0, 60.0, 10.0)
    assert cfg.max_artifact_bytes == 512 * 1024**2 and cfg.intra_op_threads == 1
    assert cfg.mqtt_url is None and cfg.artifacts_url is None
    assert isinstance(cfg.data_dir, Path) and cfg.data_dir.is_absolute()


def test_enroll_token_may_come_from_the_environment() -> None:
    assert load(BASE, {"FLEETCAST_ENROLL_TOKEN": "t0k"}).enroll_token == "t0k"
    assert load({**BASE, "enroll_token": "arg"}, {"FLEETCAST_ENROLL_TOKEN": "env"}).enroll_token == "arg"


@pytest.mark.parametrize("field,value,words", [
    ("device_id", "../etc", "device id"),
    ("server", "no-port", "HOST:PORT"),
    ("hardware_class", "toaster", "--hardware"),
    ("trial_s", -1.0, "positive"),
])
def test_bad_settings_are_refused_with_a_message(field: str, value: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load({**BASE, field: value}, {})


def test_config_is_frozen() -> None:
    cfg = load(BASE, {})
    with pytest.raises(AttributeError):
        cfg.trial_s = 1.0  # type: ignore[misc]
    assert isinstance(cfg, AgentConfig)


@pytest.mark.parametrize("argv", [["agent", "--help"], ["agent", "status", "--help"], ["agent", "infer", "--help"]])
def test_every_help_has_an_example(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    assert "Example:" in capsys.readouterr().out


def test_run_flags_map_onto_the_config() -> None:
    args = cli.run_parser().parse_args([
        "--server", "h:1", "--data", "/tmp/d", "--device-id", "d1", "--hardware", "jetson",
        "--trust-root", "t.json", "--enroll-token", "T", "--mqtt", "mqtt://127.0.0.1:1884",
        "--artifacts-url", "http://127.0.0.1:8470", "--trial-s", "2", "--poll-interval-s", "5",
        "--telemetry-interval-s", "1"])
    cfg = load(args, {})
    assert (cfg.server, cfg.hardware_class, cfg.mqtt_url, cfg.trial_s, cfg.poll_interval_s,
            cfg.telemetry_interval_s, cfg.enroll_token) == (
        "h:1", "jetson", "mqtt://127.0.0.1:1884", 2.0, 5.0, 1.0, "T")
    assert cfg.artifacts_url == "http://127.0.0.1:8470"


def test_missing_trust_root_exits_non_zero_with_a_clear_message(tmp_path: Path, capsys) -> None:
    rc = cli.main(["agent", "--server", "127.0.0.1:1", "--data", str(tmp_path / "d"), "--device-id", "d1",
                   "--hardware", "x86-cpu", "--trust-root", str(tmp_path / "missing.json")])
    assert rc == 2
    assert "trust root" in capsys.readouterr().err
