"""One server per data dir and per port; the data dir private to the server's user.

A second `fleetcast server` on the same data dir, gRPC port or HTTP port exits non-zero
with a one-line message and leaves the first one's files and service as they were.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.processes import ServerProcess

pytestmark = pytest.mark.e2e

REFUSAL_TIMEOUT_S = 90.0


def run_second(data: Path, *, http: str = "127.0.0.1:0", grpc: str = "127.0.0.1:0",
               extra: Sequence[str] = (), umask: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fleetcast.sdk.console", "server", "--data", str(data),
           "--http", http, "--grpc", grpc, *extra]
    old = os.umask(umask) if umask is not None else None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=REFUSAL_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    finally:
        if old is not None:
            os.umask(old)


def snapshot(data: Path) -> dict[str, tuple[int, bytes]]:
    """Every top-level file of a data dir: (mtime_ns, bytes)."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in data.iterdir() if p.is_file()}


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode != 0, f"the second server did not refuse to start:\n{out}"
    assert "Traceback" not in out, f"a traceback instead of a message:\n{out}"
    lines = [line for line in result.stderr.splitlines() if line.startswith("fleetcast server:")]
    assert len(lines) == 1, f"expected one 'fleetcast server: ...' line on stderr, got:\n{result.stderr}"
    for word in words:
        assert word in lines[0], f"{word!r} not in the message {lines[0]!r}"


def assert_untouched_and_serving(first: ServerProcess, before: dict[str, tuple[int, bytes]]) -> None:
    assert first.running, f"the first server stopped\n{first.log_tail()}"
    assert snapshot(first.data_dir) == before, "the refused start changed the first server's files"
    with first.client() as fc:
        assert fc.list_models() is not None
    assert first._ready(), "the first server no longer answers on its gRPC port"


def test_second_server_on_the_same_data_dir_is_refused_and_the_first_keeps_its_files(
    new_server, tmp_path: Path
) -> None:
    first = new_server("first")
    before = snapshot(first.data_dir)
    assert "server.json" in before
    result = run_second(first.data_dir)
    assert_refused(result, "in use", str(first.pid))
    assert_untouched_and_serving(first, before)


def test_second_server_on_the_same_grpc_port_is_refused(new_server, tmp_path: Path) -> None:
    first = new_server("first")
    before = snapshot(first.data_dir)
    result = run_second(tmp_path / "other", grpc=first.grpc)
    assert_refused(result, "gRPC", first.grpc)
    assert_untouched_and_serving(first, before)
    assert not (tmp_path / "other" / "server.json").exists()


def test_second_server_on_the_same_http_port_is_refused(new_server, tmp_path: Path) -> None:
    first = new_server("first")
    before = snapshot(first.data_dir)
    result = run_second(tmp_path / "other", http=first.http.split("://", 1)[1])
    assert_refused(result, "HTTP", first.http.split("://", 1)[1])
    assert_untouched_and_serving(first, before)
    assert not (tmp_path / "other" / "server.json").exists()


def test_data_dir_others_can_read_is_refused_unless_allowed(new_server, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    result = run_second(shared)
    assert_refused(result, "chmod 700", "--allow-shared-data-dir")
    assert list(shared.iterdir()) == [], "a refused start wrote into the data dir"
    server = new_server("shared", extra_args=["--allow-shared-data-dir"])
    assert server.running


def test_files_in_the_data_dir_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        server = ServerProcess(tmp_path / "fleet")
        server.start()
    finally:
        os.umask(old)
    try:
        from tests.support import models

        with server.client() as fc:
            fc.push_model(models.write(models.tiny_classifier(7), tmp_path / "m.onnx"), name="private")
    finally:
        server.stop()
    open_to_others = [
        f"{p.relative_to(server.data_dir)} {stat.S_IMODE(p.stat().st_mode):o}"
        for p in [server.data_dir, *server.data_dir.rglob("*")]
        if stat.S_IMODE(p.stat().st_mode) & 0o077
    ]
    assert not open_to_others, f"readable by others: {open_to_others}"
    assert any(server.blobs_dir.rglob("*")), "the upload stored no blob: the walk above checked nothing"
