"""`fleetcast server`: run the Fleetcast server (REST + gRPC, optional MQTT bridge)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
from pathlib import Path

from aiohttp import web

from fleetcast.server import collector
from fleetcast.server import config as server_config
from fleetcast.server import datadir
from fleetcast.server.api.app import create_app
from fleetcast.server.api.keys import ADDRESSES
from fleetcast.server.errors import FleetcastError

logger = logging.getLogger(__name__)

EXAMPLE = """\
Example:
  fleetcast server --data ./fleet --http 127.0.0.1:8470 --grpc 127.0.0.1:8471
  fleetcast server --data ./fleet --http 127.0.0.1:0 --grpc 127.0.0.1:0 --mqtt mqtt://127.0.0.1:1883 -v
  AWS_SHARED_CREDENTIALS_FILE=/etc/fleetcast/aws fleetcast server --data ./fleet --blobs s3://models/fleet \
      --download-base-url https://cdn.example/fleet
  fleetcast server --data ./replica-2 --store postgresql://fleetcast@127.0.0.1:5432/fleetcast --blobs /srv/blobs

Replicas (docs/scaling.md) share one --store postgresql://... and one --blobs (a directory or s3://...); each
has its own DATA holding copies of the first one's keys/, tls/ and token files.

One server per data dir: DATA/server.lock is held while it runs, and a second
server on the same dir or ports exits with a one-line error, touching nothing.
Files in DATA are private (0600/0700); a DATA others can read is refused.

The first start creates DATA/keys/, DATA/operator-token, DATA/enroll-token,
DATA/trust-root.json and DATA/server-ca.pem (copy both to devices; operator machines
need server-ca.pem too), and DATA/tls/ with the server and device CAs. REST and gRPC
serve TLS; plaintext needs --insecure-loopback-plaintext and a loopback address. Once serving, DATA/server.json holds
{"http": URL, "grpc": HOST:PORT, "pid": N}. SIGTERM or Ctrl-C stops cleanly.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleetcast server", description="Run the Fleetcast server: operator REST API, device gRPC, downloads.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, metavar="DIR", help="data directory (created on first start)")
    p.add_argument("--http", metavar="HOST:PORT", help="REST API address (default 127.0.0.1:8470; port 0 picks one)")
    p.add_argument("--grpc", metavar="HOST:PORT", help="device gRPC address (default 127.0.0.1:8471; port 0 picks one)")
    p.add_argument("--mqtt", metavar="URL", help="MQTT broker for notifications, e.g. mqtt://127.0.0.1:1883 (default: none)")
    p.add_argument("--public-url", metavar="URL", help="base URL devices use for HTTP downloads")
    p.add_argument("--blobs", metavar="DIR|URL",
                   help="blob store: a directory (replicas share one) or s3://BUCKET/PREFIX (endpoint, region and credentials from the "
                        "AWS_* variables or AWS_SHARED_CREDENTIALS_FILE; default: DATA/blobs/; env FLEETCAST_BLOBS)")
    p.add_argument("--download-base-url", metavar="URL",
                   help="devices download artifacts from URL/sha256/ab/<sha256> (a CDN in front of the blobs)")
    p.add_argument("--download-url-expires-s", type=int, metavar="S",
                   help="lifetime of presigned S3 download URLs handed to devices (default 900)")
    p.add_argument("--max-upload-bytes", type=int, metavar="N", help="largest model upload (default 536870912)")
    p.add_argument("--compress-calibration-samples", type=int, metavar="N",
                   help="calibration samples --compress uses: the first N uploaded (default 128)")
    p.add_argument("--compress-eval-samples", type=int, metavar="N",
                   help="evaluation samples --compress measures on: the first N uploaded (default 2000)")
    p.add_argument("--compress-latency-s", type=float, metavar="S",
                   help="seconds per latency measurement while compressing (default 1.0)")
    p.add_argument("--timestamp-expiry-s", type=float, metavar="S", help="lifetime of signed timestamps (default 86400)")
    p.add_argument("--refresh-interval-s", type=float, metavar="S",
                   help="how often to re-sign timestamps near expiry (default 3600; 0 disables)")
    p.add_argument("--tls-cert", type=Path, metavar="FILE",
                   help="PEM certificate chain to serve instead of the one DATA/tls/server-ca issues")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="the key of --tls-cert (PEM, mode 0600)")
    p.add_argument("--tls-name", action="append", default=[], metavar="NAME",
                   help="extra DNS name or IP for the issued certificate (repeatable); used when it is first made")
    p.add_argument("--insecure-loopback-plaintext", action="store_true",
                   help="serve REST and gRPC without TLS; refused unless both addresses are loopback")
    p.add_argument("--upload-check-time-s", type=float, metavar="S",
                   help="wall-time limit of an upload's test inference, in a child process (default 60)")
    p.add_argument("--upload-check-memory-bytes", type=int, metavar="N",
                   help="memory (address space) limit of that child process (default 4294967296)")
    p.add_argument("--allow-shared-data-dir", action="store_true",
                   help="start even when other users can read the data dir (default: refuse)")
    p.add_argument("--device-interval-s", type=float, metavar="S",
                   help="a live device is seen at least this often; unseen longer it is late (default 60)")
    p.add_argument("--device-offline-after-s", type=float, metavar="S",
                   help="a device unseen this long is offline (default 5 x --device-interval-s: 300)")
    p.add_argument("--store", metavar="URL",
                   help="where state lives: sqlite:///PATH or postgresql://USER@HOST:PORT/DB, shared by replicas "
                        "(default: DATA/fleetcast.db; env FLEETCAST_STORE; passwords go in ~/.pgpass)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    return p


def tls_context(config: server_config.ServerConfig) -> ssl.SSLContext | None:
    if not config.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert = config.tls_cert or config.tls_dir / "server.pem"
    key = config.tls_key or config.tls_dir / "server.key"
    context.load_cert_chain(cert, key)
    return context


async def serve(config: server_config.ServerConfig) -> None:
    """Serves until SIGTERM/SIGINT. Holds the data dir's lock throughout: a start that
    fails (lock held, address in use) has written nothing and removes nothing."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    datadir.prepare(config.data_dir, allow_shared=config.allow_shared_data_dir)
    with datadir.lock(config.data_dir):
        app = create_app(config)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        published = False
        try:
            await runner.setup()
            context = tls_context(config)
            try:
                site = web.TCPSite(runner, config.http_host, config.http_port, ssl_context=context,
                                   reuse_port=False)
                await site.start()
            except OSError as e:
                raise OSError(e.errno, f"HTTP cannot listen on {config.http_host}:{config.http_port}: "
                                       f"{e.strerror or e}") from e
            host, port = runner.addresses[0][:2]
            addresses = app[ADDRESSES]
            addresses.http = f"{'https' if context else 'http'}://{config.http_host}:{port}"
            document = {"http": addresses.http, "grpc": addresses.grpc, "pid": os.getpid()}
            datadir.write_server_json(config.data_dir, document)
            published = True
            collector.tune()   # 10,000 open streams: no full collections of the heap per notice
            print(f"fleetcast server: http={addresses.http} grpc={addresses.grpc} pid={os.getpid()} "
                  f"data={config.data_dir}", flush=True)
            await stop.wait()
            logger.info("stopping")
        finally:
            if published:   # only the server that wrote it removes it
                datadir.remove_server_json(config.data_dir)
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0] == "server":
        args_in = args_in[1:]
    args = parser().parse_args(args_in)
    os.umask(datadir.PRIVATE_UMASK)   # whatever the caller's umask, the data dir stays private
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = server_config.load(
            data_dir=args.data, http=args.http, grpc=args.grpc, mqtt_url=args.mqtt,
            timestamp_expiry_s=args.timestamp_expiry_s, refresh_interval_s=args.refresh_interval_s,
            public_url=args.public_url, max_upload_bytes=args.max_upload_bytes,
            compress_calibration_samples=args.compress_calibration_samples,
            compress_eval_samples=args.compress_eval_samples, compress_latency_s=args.compress_latency_s,
            upload_check_time_s=args.upload_check_time_s, upload_check_memory_bytes=args.upload_check_memory_bytes,
            allow_shared_data_dir=args.allow_shared_data_dir,
            device_interval_s=args.device_interval_s, device_offline_after_s=args.device_offline_after_s,
            environ=os.environ,
            insecure_loopback_plaintext=args.insecure_loopback_plaintext, tls_cert=args.tls_cert, tls_key=args.tls_key,
            tls_names=tuple(args.tls_name), store_url=args.store, blobs_url=args.blobs,
            download_base_url=args.download_base_url,
            download_url_expires_s=args.download_url_expires_s,
        )
        asyncio.run(serve(config))
    except FleetcastError as e:
        print(f"fleetcast server: {e.message}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"fleetcast server: cannot start: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
