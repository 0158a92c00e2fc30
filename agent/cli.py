"""`fleetcast agent`: run the device agent, or ask a running one what it serves.

    fleetcast agent --server HOST:PORT --data DIR --device-id ID --hardware CLASS \\
        --trust-root FILE --enroll-token-file FILE [--mqtt URL] [--artifacts-url URL] ...
    fleetcast agent status --data DIR [--json]
    fleetcast agent infer --data DIR INPUT.npz|INPUT.npy [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fleetcast.agent import config as agent_config
from fleetcast.agent.errors import AgentError, FatalError

logger = logging.getLogger(__name__)

RUN_EXAMPLE = """\
Example:
  fleetcast agent --server 127.0.0.1:8471 --data /var/lib/fleetcast-agent \\
      --device-id cam-01 --hardware x86-cpu --trust-root /etc/fleetcast/trust-root.json \\
      --enroll-token-file /etc/fleetcast/enroll-token

The server's CA is read from server-ca.pem next to the trust root (or --server-ca):
copy both from the server's data dir. The device makes its own key on first start.

With the H5 bridge for an app's pages:
  fleetcast agent ... --bridge-allow-origin https://app.example \\
      --bridge-allow-origin "https://partner.example methods=run rate=20 max-input-bytes=1048576"

Other commands: `fleetcast agent status --help`, `fleetcast agent infer --help`.
"""
STATUS_EXAMPLE = """\
Example:
  fleetcast agent status --data /var/lib/fleetcast-agent --json
"""
INFER_EXAMPLE = """\
Example:
  fleetcast agent infer --data /var/lib/fleetcast-agent input.npz
  (an .npz names each input; an .npy is the model's single input)
"""


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetcast agent", description="Run the Fleetcast device agent "
                                "in the foreground (SIGTERM stops it cleanly).", epilog=RUN_EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="gRPC control server HOST:PORT")
    p.add_argument("--data", dest="data_dir", required=True, type=Path, help="the agent's data directory")
    p.add_argument("--device-id", required=True, help="this device's id (letters, digits, . _ -)")
    p.add_argument("--hardware", dest="hardware_class", required=True,
                   help=f"hardware class: {', '.join(sorted(agent_config.HARDWARE_CLASSES))}")
    p.add_argument("--trust-root", required=True, type=Path, help="trust-root.json copied from the server")
    p.add_argument("--enroll-token-file", type=Path, default=None, metavar="FILE",
                   help="file (mode 0600) holding an enrollment token (or FLEETCAST_ENROLL_TOKEN); needed once")
    p.add_argument("--enroll-token", default=None, help=argparse.SUPPRESS)
    p.add_argument("--server-ca", type=Path, default=None, metavar="FILE",
                   help="CA the server's certificate must chain to (default: server-ca.pem next to --trust-root)")
    p.add_argument("--insecure-loopback-plaintext", action="store_true", default=None,
                   help="talk to the server without TLS; refused unless --server is a loopback address")
    p.add_argument("--mqtt-ca", type=Path, default=None, metavar="FILE",
                   help="CA of the broker's certificate for mqtts:// (default: the server CA)")
    p.add_argument("--mqtt-username", default=None,
                   help="MQTT user name (with --mqtt-password-file); default: the device certificate")
    p.add_argument("--mqtt-password-file", type=Path, default=None, metavar="FILE",
                   help="file (mode 0600) holding the MQTT password")
    p.add_argument("--group", default=None, help="fleet group to join at enrollment")
    p.add_argument("--mqtt", dest="mqtt_url", default=None, help="mqtt://HOST:PORT: notifications over MQTT")
    p.add_argument("--telemetry-via-mqtt", action="store_true", default=None,
                   help="publish status and telemetry to MQTT too (needs --mqtt)")
    p.add_argument("--artifacts-url", default=None, help="HTTP base URL for Range downloads (default: gRPC)")
    p.add_argument("--download-rate-bps", type=int, default=None,
                   help="limit downloads to this many bytes per second, for metered links (default: no limit)")
    p.add_argument("--trial-s", type=float, default=None, help="trial period before commit (default 10)")
    p.add_argument("--poll-interval-s", type=float, default=None, help="fallback poll period (default 60)")
    p.add_argument("--telemetry-interval-s", type=float, default=None, help="telemetry window (default 10)")
    p.add_argument("--threads", dest="intra_op_threads", type=int, default=None,
                   help="intra-op threads per inference (default 1)")
    p.add_argument("--backends", default=None,
                   help="comma-separated back ends this agent may use (default: every one that loads here): "
                        "onnxruntime, litert, openvino, mnn, rknn")
    p.add_argument("--bridge-allow-origin", dest="bridge_allow_origins", action="append", default=None,
                   metavar="ORIGIN", help="serve the H5 bridge on 127.0.0.1 to pages of this exact origin "
                   "(scheme://host[:port]; repeatable), optionally followed by methods=run,info rate=N "
                   "max-input-bytes=N; the address and token go to DATA/bridge.json")
    p.add_argument("--bridge-port", type=int, default=None, help="H5 bridge port (default: a free one)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return p


def status_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetcast agent status", description="Show what a running agent "
                                "serves and where its update flow stands.", epilog=STATUS_EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="the agent's data directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def infer_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetcast agent infer", description="Run one inference on the "
                                "model a running agent serves.", epilog=INFER_EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="the agent's data directory")
    p.add_argument("input", type=Path, help="INPUT.npz (named inputs) or INPUT.npy (the single input)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(argv: list[str]) -> int:
    args = run_parser().parse_args(argv)
    setup_logging(args.verbose + 1)
    if args.enroll_token is not None:
        print("fleetcast agent: --enroll-token on the command line is visible to every local user in the "
              "process list: write the token to a file only the agent's user reads (chmod 600) and give "
              "--enroll-token-file FILE", file=sys.stderr)
        return 2
    try:
        cfg = agent_config.load(args, os.environ)
    except agent_config.ConfigError as e:
        print(f"fleetcast agent: {e}", file=sys.stderr)
        return 2
    from fleetcast.agent.service import Agent

    agent = Agent(cfg)
    previous = {sig: signal.signal(sig, lambda *_: agent.stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return agent.run()
    except FatalError as e:
        print(f"fleetcast agent: {e}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def status(argv: list[str]) -> int:
    args = status_parser().parse_args(argv)
    setup_logging(args.verbose)
    from fleetcast.agent.local_api import InferenceClient

    try:
        with InferenceClient(args.data, timeout_s=10) as client:
            doc = client.status()
    except AgentError as e:
        print(f"fleetcast agent status: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    serving = f"{doc['model']}@{doc['version']} ({doc['variant']}, {doc['backend']}, slot {doc['slot']})" \
        if doc["model"] else "nothing"
    rows = [("device", doc["device_id"]), ("state", doc["state"]), ("deployment", doc["deployment_id"] or "-"),
            ("serving", serving), ("sha256", doc["sha256"] or "-"), ("last error", doc["last_error"] or "-")]
    for name, value in rows:
        print(f"{name:<11} {value}")
    return 0


def read_inputs(path: Path, input_names: list[str]) -> dict[str, np.ndarray]:
    if path.suffix == ".npy":
        if len(input_names) != 1:
            raise AgentError(f"the model takes {len(input_names)} inputs: give an .npz naming each")
        return {input_names[0]: np.load(path, allow_pickle=False)}
    with np.load(path, allow_pickle=False) as npz:
        return {name.removeprefix("input:"): npz[name] for name in npz.files if not name.startswith("output:")}


def infer(argv: list[str]) -> int:
    args = infer_parser().parse_args(argv)
    setup_logging(args.verbose)
    from fleetcast.agent.local_api import InferenceClient

    try:
        with InferenceClient(args.data) as client:
            names = [t["name"] for t in client.status()["inputs"]]
            outputs = client.infer(read_inputs(args.input, names))
    except (AgentError, OSError, ValueError) as e:
        print(f"fleetcast agent infer: {e}", file=sys.stderr)
        return 1
    if args.json:
        doc: dict[str, Any] = {name: {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tolist()}
                               for name, a in outputs.items()}
        print(json.dumps({"outputs": doc}))
        return 0
    for name, array in outputs.items():
        print(f"{name} {array.dtype.name}{list(array.shape)}")
        print(np.array2string(array, precision=4, threshold=64))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`argv[0]` is "agent" (as `fleetcast.sdk.console` passes it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "agent":
        args = args[1:]
    if args and args[0] == "status":
        return status(args[1:])
    if args and args[0] == "infer":
        return infer(args[1:])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
