"""`fleetcast simulate`: a simulated fleet against a (staging) server, for rehearsals.

Example:
    fleetcast simulate --grpc staging.example:50051 --enroll-token-file enroll-token \\
        --trust-root trust-root.json --cohort name=cpu,devices=500,latency_ms=8 \\
        --cohort name=rk,devices=100,hardware=rk3399,latency_ms=40,fail_rate=0.05 --duration-s 600
    fleetcast simulate --grpc staging.example:50051 --enroll-token-file enroll-token \\
        --trust-root trust-root.json --mqtt mqtts://broker.example:8883 --cohort name=cpu,devices=5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from fleetcast.agent.errors import TrustRootError
from fleetcast.agent.trust import load_trust_root
from fleetcast.proto import brokerauth
from fleetcast.proto.brokerauth import BrokerAuthError
from fleetcast.server import collector
from fleetcast.server.simulator.cohort import CohortError, parse_cohort
from fleetcast.server.simulator.device import DeviceConfig, SimulatorError
from fleetcast.server.simulator.mqtt import MqttConfig
from fleetcast.server.simulator.swarm import Swarm, SwarmConfig

MAX_TOKEN_BYTES = 4096


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetcast simulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grpc", required=True, metavar="HOST:PORT", help="the server's device gRPC address")
    p.add_argument("--enroll-token-file", required=True, type=Path, help="file holding the fleet's enroll token")
    p.add_argument("--trust-root", required=True, type=Path, help="trust-root.json from the server's data dir")
    p.add_argument("--server-ca", type=Path, default=None,
                   help="the server's CA (default: server-ca.pem next to the trust root)")
    p.add_argument("--cohort", action="append", default=[], metavar="K=V,...",
                   help="a group of devices (repeatable): name, devices, hardware, backends, group, latency_ms, "
                        "sigma, error_rate, fail_rate, delay_ms, call_error_rate")
    p.add_argument("--prefix", default="sim-", help="device id prefix (default: sim-)")
    p.add_argument("--duration-s", type=float, default=60.0, help="how long to run (default: 60)")
    p.add_argument("--telemetry-interval-s", type=float, default=10.0, help="seconds between telemetry batches")
    p.add_argument("--devices-per-channel", type=int, default=50, help="devices sharing one gRPC connection")
    p.add_argument("--direct-download", action="store_true",
                   help="download from the URL LocateArtifact hands out (CDN, object store), gRPC if there is none")
    p.add_argument("--one-call-per-file", action="store_true",
                   help="behave as agents before FetchMetadataBundle and ReportStatuses: one FetchMetadata per "
                        "metadata file, one ReportStatus per step")
    p.add_argument("--mqtt", metavar="mqtts://HOST:PORT", default=None,
                   help="devices hear their notices from this broker (the devices' listener) instead of gRPC "
                        "watch streams; each enrolls with a key of its own and logs in with its certificate")
    p.add_argument("--mqtt-ca", type=Path, default=None,
                   help="the CA of the broker's certificate (default: the server CA)")
    p.add_argument("--mqtt-keys", type=Path, default=None,
                   help="private folder for the devices' keys and certificates (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log each device failure")
    return p


MAX_CA_BYTES = 64 * 1024


def _read_ca(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CA_BYTES + 1)
    except OSError as e:
        raise SimulatorError(f"cannot read the server CA {path}: {e.strerror or e}; copy server-ca.pem from the "
                             "server's data dir next to the trust root, or give --server-ca") from e
    if len(data) > MAX_CA_BYTES or b"BEGIN CERTIFICATE" not in data:
        raise SimulatorError(f"{path} is not a PEM certificate: give the server's server-ca.pem")
    return data


async def run(args: argparse.Namespace) -> dict:
    if args.mqtt is None:
        return await _run(args, None)
    brokerauth.parse_url(args.mqtt)   # refuses plaintext off loopback before anything enrolls
    ca = args.mqtt_ca or args.server_ca or args.trust_root.parent / "server-ca.pem"
    if args.mqtt_keys is not None:
        return await _run(args, MqttConfig(url=args.mqtt, ca=ca, key_dir=args.mqtt_keys))
    with tempfile.TemporaryDirectory(prefix="fleetcast-simulate-keys-") as keys:
        return await _run(args, MqttConfig(url=args.mqtt, ca=ca, key_dir=Path(keys)))


async def _run(args: argparse.Namespace, mqtt: MqttConfig | None) -> dict:
    token = args.enroll_token_file.read_bytes()[:MAX_TOKEN_BYTES].decode().strip()
    collector.tune()   # thousands of devices' metadata in one process: see fleetcast.server.collector
    config = SwarmConfig(
        grpc_target=args.grpc, cohorts=[parse_cohort(c) for c in args.cohort or ["name=sim,devices=10"]],
        device=DeviceConfig(enroll_token=token, trust_root=load_trust_root(args.trust_root),
                            telemetry_interval_s=args.telemetry_interval_s,
                            metadata_bundle=not args.one_call_per_file, report_batches=not args.one_call_per_file,
                            direct_download=args.direct_download),
        prefix=args.prefix, devices_per_channel=args.devices_per_channel,
        server_ca=_read_ca(args.server_ca or args.trust_root.parent / "server-ca.pem"), mqtt=mqtt,
    )
    swarm = Swarm(config)
    start = time.monotonic()
    try:
        enroll_s = await swarm.enroll()
        swarm.start()
        await asyncio.sleep(args.duration_s)
    finally:
        await swarm.close()
    deployments = sorted({dep for d in swarm.devices for dep in d.record.notices})
    return {"enroll_s": round(enroll_s, 3), **swarm.summary(),
            "deployments": {dep: swarm.summary(dep, since=start) for dep in deployments}}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args((argv or sys.argv)[1:] if argv and argv[0] == "simulate" else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")
    try:
        summary = asyncio.run(run(args))
    except (OSError, CohortError, TrustRootError, SimulatorError, BrokerAuthError) as e:
        print(f"fleetcast simulate: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(f"devices {summary['devices']}  enrolled {summary['enrolled']} in {summary['enroll_s']} s  "
              f"errors {summary['errors']}  retries {summary['retries']}")
        for dep, s in summary["deployments"].items():
            print(f"  {dep}: noticed {s['noticed']}  outcomes {s['outcomes']}  notice p50/p99 "
                  f"{s['notice_p50_s']}/{s['notice_p99_s']} s  last finished {s['last_finished_s']} s")
        print(f"telemetry batches {summary['telemetry_batches']}  inferences {summary['telemetry_inferences']}")
    return 0 if summary["errors"] == 0 and summary["enrolled"] == summary["devices"] else 1
