"""A device installs only the agent's extra: its commands must not need the server's or the SDK's packages."""

from __future__ import annotations

import subprocess
import sys

# What only the server, the SDK or the compression pipeline install.
NOT_ON_A_DEVICE = ("aiohttp", "sqlite_utils", "httpx", "tqdm", "matplotlib", "onnxconverter_common", "boto3",
                   "botocore", "psycopg", "psycopg_pool")

PROBE = f"""
import sys
for name in {NOT_ON_A_DEVICE!r}:
    sys.modules[name] = None          # importing any of them now raises ImportError
from fleetcast.sdk.console import main
import fleetcast.agent.service, fleetcast.agent.local_api
sys.exit(main(sys.argv[1:]))
"""


def run_without_server_packages(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)


def test_agent_command_runs_without_the_server_and_sdk_packages() -> None:
    result = run_without_server_packages("agent", "--help")
    assert result.returncode == 0, result.stderr
    assert "--trust-root" in result.stdout


def test_agent_status_command_runs_without_the_server_and_sdk_packages() -> None:
    result = run_without_server_packages("agent", "status", "--help")
    assert result.returncode == 0, result.stderr


def test_top_level_help_lists_every_role_without_importing_them() -> None:
    result = run_without_server_packages("--help")
    assert result.returncode == 0, result.stderr
    for command in ("server", "agent", "model", "deploy", "device", "compress"):
        assert command in result.stdout
