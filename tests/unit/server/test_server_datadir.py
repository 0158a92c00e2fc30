"""The server's data-dir secrets: created once, private, and safe to pass on a command line."""

from __future__ import annotations

import stat
from pathlib import Path

from fleetcast.server import datadir


def test_token_file_is_created_once_with_mode_0600_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "operator-token"
    first = datadir.ensure_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert datadir.ensure_token(path) == first
    assert len(first) >= 32


def test_tokens_never_start_with_a_dash_so_they_pass_as_command_line_arguments(tmp_path: Path) -> None:
    # `fleetcast agent --enroll-token "$(cat enroll-token)"` breaks on a token like "-abc".
    tokens = [datadir.ensure_token(tmp_path / f"t{i}") for i in range(300)]
    assert len(set(tokens)) == 300
    assert not [t for t in tokens if t.startswith("-")]


def test_a_new_data_dir_is_private_to_the_server(tmp_path: Path) -> None:
    data = tmp_path / "fleet"
    datadir.prepare(data)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
