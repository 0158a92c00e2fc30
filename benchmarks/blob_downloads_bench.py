"""What direct downloads take off the server: N devices fetching one artifact through the
server's gRPC Download versus straight from a presigned S3 URL.

    .venv/bin/python benchmarks/blob_downloads_bench.py --clients 8 --megabytes 20 --repeat 3

A real `fleetcast server --blobs s3://...` on moto's S3 server (a process on loopback),
one pushed model of the given size, then per repeat and per path: `clients` threads,
each enrolled as its own device, download the whole artifact and check its sha256.
Reported: median wall time per round, and the server process's CPU seconds per round
(user + system, from /proc). Both paths read the same bytes from the same moto, so the
gap is the server's own work. moto is a Python S3 and slow: read the ratios, not the
absolute rates. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import urllib3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleetcast.proto.v1 import device_pb2 as pb  # noqa: E402
from fleetcast.proto.v1 import device_pb2_grpc as pb_grpc  # noqa: E402
from tests.support import models  # noqa: E402  (the benchmarks reuse the test harness)
from tests.support.processes import ServerProcess  # noqa: E402
from tests.support.s3 import S3Server  # noqa: E402


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_of(clients: int, fetch: Callable[[int], bytes], sha256: str, server_pid: int) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) for `clients` concurrent downloads."""
    errors: list[str] = []

    def one(i: int) -> None:
        data = fetch(i)
        if hashlib.sha256(data).hexdigest() != sha256:
            errors.append(f"client {i}: wrong bytes ({len(data)})")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    cpu0, start = cpu_s(server_pid), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - start, cpu_s(server_pid) - cpu0
    assert not errors, errors
    return wall, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--megabytes", type=float, default=20.0)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetcast-bench-") as tmp:
        root = Path(tmp)
        s3 = S3Server(root / "moto").start()
        try:
            bucket = s3.make_bucket(f"bench-{secrets.token_hex(4)}")
            server = ServerProcess(root / "server", env=s3.environ(),
                                   extra_args=["--blobs", f"s3://{bucket}/fleet"]).start()
            try:
                run(args, server)
            finally:
                server.stop()
        finally:
            s3.stop()


def run(args: argparse.Namespace, server: ServerProcess) -> None:
    path = models.write(models.sized_model(args.megabytes, seed=5), server.data_dir.parent / "model.onnx")
    with server.client() as client:
        version = client.push_model(path, name="bench")
    variant = version.variant("original")
    sha256, size = variant.sha256, variant.length
    channel = grpc.secure_channel(server.grpc, grpc.ssl_channel_credentials(server.server_ca.read_bytes()),
                                  options=[("grpc.max_receive_message_length", 8 * 1024**2)])
    stub = pb_grpc.DeviceServiceStub(channel)
    tokens = [stub.Enroll(pb.EnrollRequest(device_id=f"bench-{i:03d}", hardware_class="x86-cpu",
                                           backends=["onnxruntime"], enroll_token=server.enroll_token),
                          timeout=30).device_token for i in range(args.clients)]
    pool = urllib3.PoolManager(maxsize=args.clients)

    def over_grpc(i: int) -> bytes:
        metadata = (("authorization", f"Bearer {tokens[i]}"),)
        return b"".join(c.data for c in stub.Download(pb.DownloadRequest(sha256=sha256), metadata=metadata,
                                                      timeout=600))

    def presigned(i: int) -> bytes:
        metadata = (("authorization", f"Bearer {tokens[i]}"),)
        url = stub.LocateArtifact(pb.LocateRequest(sha256=sha256), metadata=metadata, timeout=30).url
        return pool.request("GET", url).data

    results: dict[str, list[tuple[float, float]]] = {"grpc": [], "presigned": []}
    for _ in range(args.repeat):
        for name, fetch in (("grpc", over_grpc), ("presigned", presigned)):
            results[name].append(round_of(args.clients, fetch, sha256, server.pid or 0))
    channel.close()
    print(f"{args.clients} clients x {size / 1e6:.1f} MB, {args.repeat} rounds per path")
    medians = {name: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r))
               for name, r in results.items()}
    for name, (wall, cpu) in medians.items():
        print(f"{name:>9}: median round {wall:.2f} s, server CPU {cpu:.2f} s")
    (gw, gc), (pw, pc) = medians["grpc"], medians["presigned"]
    print(f"ratio grpc/presigned: wall {gw / pw:.2f}x, server CPU {gc / max(pc, 0.01):.1f}x")


if __name__ == "__main__":
    main()
