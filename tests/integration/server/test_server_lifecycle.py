from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc

from fleetcast.proto.v1 import device_pb2 as pb
from tests.integration.server.conftest import RunningServer, auth
from tests.support.waiting import log_tail, wait_for


def test_sigterm_ends_open_watches_cleanly_and_exits_zero(server: RunningServer) -> None:
    token = server.enroll("stopper-1")
    stream = server.stub().WatchAssignments(pb.WatchRequest(device_id="stopper-1"), metadata=auth(token), timeout=30)
    outcome: queue.Queue[object] = queue.Queue()
    opened = threading.Event()

    def consume() -> None:
        received = 0
        try:
            for _ in stream:
                received += 1
                opened.set()     # the server has the watch open and sent the current assignment
            outcome.put(("ok", received))
        except grpc.RpcError as e:
            outcome.put(("error", e.code()))

    threading.Thread(target=consume, daemon=True).start()
    wait_for(lambda: (server.data / "server.json").exists(), timeout_s=5, what="server.json")
    # A watch still in flight when the server stops is refused, not ended; this test is
    # about watches that are open, so it signals only once the first notice arrived.
    assert opened.wait(timeout=10), "the watch never delivered its first notice"
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=15) == 0, log_tail(server.log)
    assert outcome.get(timeout=10) == ("ok", 1)
    assert not (server.data / "server.json").exists()


def test_restart_keeps_tokens_and_keys(tmp_path: Path) -> None:
    data = tmp_path / "data"
    tokens = []
    for _ in range(2):
        p = subprocess.Popen([sys.executable, "-m", "fleetcast.sdk.console", "server", "--data", str(data),
                              "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            line = p.stdout.readline().decode()
            info = json.loads((data / "server.json").read_text())
            assert info["http"] in line and info["grpc"] in line and info["pid"] == p.pid
            tokens.append(((data / "operator-token").read_text(), (data / "trust-root.json").read_bytes()))
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=15) == 0
    assert tokens[0] == tokens[1]


def test_help_shows_an_example() -> None:
    out = subprocess.run([sys.executable, "-m", "fleetcast.sdk.console", "server", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "Example:" in out and "--data" in out and "--grpc" in out
