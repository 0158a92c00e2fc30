"""Liveness with a real agent: online while its watch stream is open, then late, then offline once stopped."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.support.processes import ServerProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

INTERVAL_S = 2.0
OFFLINE_AFTER_S = 6.0


def _liveness(server: ServerProcess, device_id: str) -> str:
    with server.client() as fc:
        return fc.get_device(device_id).raw["liveness"]["state"]


def _cli_device_list(server: ServerProcess) -> dict[str, str]:
    """`fleetcast device list --json` as an operator runs it: device id -> liveness state."""
    out = subprocess.run([sys.executable, "-m", "fleetcast.sdk.console", "device", "list", "--json",
                          "--data", str(server.data_dir)], capture_output=True, text=True, timeout=60, check=True)
    return {d["id"]: d["liveness"]["state"] for d in json.loads(out.stdout)["devices"]}


def test_a_stopped_agent_turns_late_then_offline(new_server, new_agent) -> None:
    server: ServerProcess = new_server(extra_args=["--device-interval-s", str(INTERVAL_S),
                                                   "--device-offline-after-s", str(OFFLINE_AFTER_S)])
    agent = new_agent(server, "live-1")
    wait_for(lambda: _liveness(server, "live-1") == "online", timeout_s=30, what="live-1 online",
             context=agent.log_tail)
    time.sleep(2 * INTERVAL_S)  # longer than the interval: only the open stream and reports keep it online
    assert _liveness(server, "live-1") == "online", agent.log_tail()
    assert _cli_device_list(server) == {"live-1": "online"}

    agent.stop()
    stopped = time.monotonic()
    wait_for(lambda: _liveness(server, "live-1") == "late", timeout_s=OFFLINE_AFTER_S + 10, what="live-1 late")
    assert time.monotonic() - stopped >= INTERVAL_S * 0.5  # not late the moment it stopped
    assert _cli_device_list(server) in ({"live-1": "late"}, {"live-1": "offline"})
    wait_for(lambda: _liveness(server, "live-1") == "offline", timeout_s=OFFLINE_AFTER_S + 10,
             what="live-1 offline")
    assert time.monotonic() - stopped >= OFFLINE_AFTER_S * 0.8
