"""The `fleetcast` command: one entry point, one sub-command table.

Each role keeps its own commands in its own package; this module only dispatches,
importing a role's module when its command is used, so a device that installed
only the agent never imports the server's dependencies.
"""

from __future__ import annotations

import importlib
import sys
from typing import Final

# command -> (module with a `main(argv) -> int`, one-line summary)
COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "server": ("fleetcast.server.cli", "run the Fleetcast server"),
    "agent": ("fleetcast.agent.cli", "run the device agent, or talk to a running one"),
    "model": ("fleetcast.sdk.cli", "push, list and show models"),
    "deploy": ("fleetcast.sdk.cli", "deploy a model version and follow a deployment"),
    "rollout": ("fleetcast.sdk.cli", "roll a model out in stages gated on serving health"),
    "device": ("fleetcast.sdk.cli", "list, show and re-provision enrolled devices"),
    "enroll-token": ("fleetcast.sdk.cli", "make and list enrollment tokens"),
    "token": ("fleetcast.server.viewertokens", "make, list and revoke read-only dashboard viewer tokens"),
    "compress": ("fleetcast.server.compress.cli", "build measured variants of a model"),
    "broker-files": ("fleetcast.server.brokerfiles", "write the TLS files the shipped Mosquitto config reads"),
    "simulate": ("fleetcast.server.simulator.cli", "run a simulated fleet against a server"),
}


def usage() -> str:
    lines = ["usage: fleetcast COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<12} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run `fleetcast COMMAND --help` for a command's options and examples."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    command = args[0]
    if command not in COMMANDS:
        print(f"fleetcast: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
