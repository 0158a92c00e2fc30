"""`fleetcast broker-files`: the files the shipped Mosquitto config reads (deploy/mosquitto/).

    fleetcast broker-files --data /var/lib/fleetcast --name mqtt.example.internal --out /etc/mosquitto/fleetcast

writes `broker.pem`/`broker.key` (the broker's TLS certificate, issued by the
server CA that agents pin), `device-ca.pem` (the CA whose certificates Mosquitto
accepts from clients: every device's, and the server's own broker client
certificate) and `acl` (the shipped ACL). The key is written 0600; give the
`mosquitto` user read access to it, and to nothing else in the server's data dir.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from fleetcast.agent.datadir import write_atomic
from fleetcast.proto import identity
from fleetcast.server.certificates import Certificates, server_names

REPO_ACL: Final = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "acl"


def write_broker_files(certificates: Certificates, out: Path, names: Sequence[str],
                       acl: Path | None = None) -> None:
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = identity.generate_key()
    cert = certificates.server_ca.issue(common_name=names[0], public_key=key.public_key(), client=False,
                                        names=list(names))
    write_atomic(out / "broker.key", identity.key_pem(key), mode=0o600)
    write_atomic(out / "broker.pem", cert, mode=0o644)
    write_atomic(out / "device-ca.pem", certificates.device_ca.pem, mode=0o644)
    source = acl or REPO_ACL
    if source.exists():
        shutil.copyfile(source, out / "acl")


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0] == "broker-files":
        args_in = args_in[1:]
    p = argparse.ArgumentParser(prog="fleetcast broker-files", description=__doc__.split("\n\n")[0],
                                epilog="Example:\n  fleetcast broker-files --data /var/lib/fleetcast "
                                       "--name mqtt.example.internal --out /etc/mosquitto/fleetcast",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="the server's data dir (its tls/ holds the CAs)")
    p.add_argument("--name", required=True, action="append", help="broker host name or IP (repeatable)")
    p.add_argument("--out", required=True, type=Path, help="directory the Mosquitto config reads")
    p.add_argument("--acl", type=Path, help="ACL file to copy (default: the shipped deploy/mosquitto/acl)")
    args = p.parse_args(args_in)
    if not (args.data / "tls" / "server-ca.pem").exists():
        print(f"fleetcast broker-files: {args.data / 'tls'} has no CAs yet: start the server once first",
              file=sys.stderr)
        return 2
    certificates = Certificates.open(args.data / "tls", names=server_names([]))
    write_broker_files(certificates, args.out, args.name, args.acl)
    print(f"broker files written to {args.out}: broker.pem, broker.key, device-ca.pem, acl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
