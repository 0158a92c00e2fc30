"""Fleet-scale benchmarks: one real `fleetcast server` process and a simulated fleet.

    .venv/bin/python benchmarks/swarm.py rollout --devices 100 1000 --megabytes 1 --repeat 3
    .venv/bin/python benchmarks/swarm.py enroll --devices 10000
    .venv/bin/python benchmarks/swarm.py telemetry --rows 200000 --repeat 3
    .venv/bin/python benchmarks/swarm.py telemetry --rows 40000 --profile-flushes 20
    .venv/bin/python benchmarks/swarm.py rollout --devices 1000 --profile /tmp/server.svg
    .venv/bin/python benchmarks/swarm.py rollout --devices 1000 --megabytes 5 --download direct
    .venv/bin/python benchmarks/swarm.py rollout --devices 1000 --replicas 2 --store postgresql://postgres@127.0.0.1:5432/postgres

`rollout` enrolls N simulated devices (fleetcast.server.simulator: real gRPC, each
device verifies both TUF repositories, downloads and hashes the artifact and reports),
waits until every one watches, deploys one version to all and measures the deploy API
call, the notice latency after it returned (p50/p99), the time to the last device
installed, and the server's CPU seconds per device (from /proc, the server process
only). In the same run N plain HTTP clients fetch the same bytes from a static file
server: the ratio is the figure to read on a shared machine. `--store URL` puts the server on a
fresh PostgreSQL database (made and dropped on that server) and a blobs dir of its own;
`--replicas 2` starts a second server on the same database and blobs with the first's
keys, TLS and tokens (docs/scaling.md), half the fleet on each, deploys through
the first and sums both servers' CPU and RSS. `enroll` is the
enrollment storm (all devices at once, bounded concurrency) with the server's RSS.
`telemetry` compares the server's batched ingest (TelemetryWriter, many concurrent
senders) with a plain sqlite-utils `insert_all` of the same rows, and checks after the
run that nothing was lost or counted twice (`--profile-flushes N`: the store's flush
alone, the same rows in N calls, under cProfile). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.delivery_bench import plain_http_download_s  # noqa: E402
from benchmarks.telemetry_ingest import postgres_database  # noqa: E402
from fleetcast.agent.trust import load_trust_root  # noqa: E402
from fleetcast.server import collector  # noqa: E402
from fleetcast.server.simulator.cohort import Cohort  # noqa: E402
from fleetcast.server.simulator.device import DeviceConfig  # noqa: E402
from fleetcast.server.simulator.mqtt import MqttConfig  # noqa: E402
from fleetcast.server.simulator.swarm import Swarm, SwarmConfig  # noqa: E402
from tests.support import models  # noqa: E402
from tests.support.broker import Broker  # noqa: E402
from tests.support.processes import ServerProcess  # noqa: E402
from tests.support.static_http import serving_directory  # noqa: E402

HARDWARE = ("x86-cpu", "arm-cpu", "rk3399", "jetson")
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
REPLICA_FILES = ("keys", "tls", "operator-token", "enroll-token", "metrics-token")   # what every replica shares
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def own_cpu_s() -> float:
    """This process's CPU seconds: the simulated devices (and the plain HTTP clients, not run meanwhile)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def swarm_for(server: ServerProcess, devices: int, *, telemetry_interval_s: float = 3600.0,
              bundled: bool = True, direct_download: bool = False, mqtt: MqttConfig | None = None,
              replicas: tuple[ServerProcess, ...] = ()) -> Swarm:
    """Devices of `server`; with `replicas` (it and the others on one store), the devices take turns."""
    per = max(1, devices // len(HARDWARE))
    cohorts = [Cohort(name=hw, devices=per + (devices - per * len(HARDWARE) if i == 0 else 0), hardware=hw)
               for i, hw in enumerate(HARDWARE)]
    return Swarm(SwarmConfig(
        grpc_target=server.grpc, grpc_targets=[r.grpc for r in replicas], server_ca=server.server_ca.read_bytes(),
        cohorts=cohorts, devices_per_channel=100, enroll_concurrency=200,
        device=DeviceConfig(enroll_token=server.enroll_token, trust_root=load_trust_root(server.trust_root),
                            telemetry_interval_s=telemetry_interval_s, rpc_timeout_s=600.0,
                            metadata_bundle=bundled, report_batches=bundled, direct_download=direct_download),
        mqtt=mqtt,
    ))


class ProfiledServer(ServerProcess):
    """The server under cProfile (its event-loop thread only; written when it stops)."""

    def __init__(self, data_dir: Path, *, extra_args: list[str], profile: Path, mqtt_url: str | None = None) -> None:
        super().__init__(data_dir, extra_args=extra_args, mqtt_url=mqtt_url)
        self.profile = profile

    def command(self) -> list[str]:
        cmd = super().command()
        return [cmd[0], "-m", "cProfile", "-o", str(self.profile), *cmd[1:]]


def profiler(pid: int, out: Path | None) -> subprocess.Popen[bytes] | None:
    if out is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--output", str(out), "--format",
                             "speedscope" if out.suffix == ".json" else "flamegraph", "--rate", "50"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def p50_p99(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[98]


def second_replica(first: ServerProcess, data_dir: Path, extra_args: list[str]) -> ServerProcess:
    """Another server on the first's store and blobs, with its keys, TLS and tokens (docs/scaling.md)."""
    data_dir.mkdir(mode=0o700)
    for name in REPLICA_FILES:
        source = first.data_dir / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, data_dir / name)
    return ServerProcess(data_dir, extra_args=extra_args).start()


async def one_rollout(servers: list[ServerProcess], swarm: Swarm, version: str, args: argparse.Namespace) -> dict[str, Any]:
    """Deploys through the first server; CPU and RSS are all servers' together."""
    calls0 = swarm.summary()["calls"]
    cpu0, own0 = [cpu_s(s.pid) for s in servers], own_cpu_s()
    with servers[0].client() as fc:
        start = time.monotonic()
        deployment_id = await asyncio.to_thread(lambda: fc.deploy("bench", version=version, to="all").id)
        returned = time.monotonic()
        call_cpu = sum(cpu_s(s.pid) for s in servers) - sum(cpu0)
    if args.until == "noticed":
        finished = await swarm.wait_noticed(deployment_id, args.timeout_s)
    else:
        finished = await swarm.wait_finished(deployment_id, args.timeout_s)
    cpu, own = [cpu_s(s.pid) - c0 for s, c0 in zip(servers, cpu0)], own_cpu_s() - own0
    s = swarm.summary(deployment_id, since=returned)
    # Device n is on replica n mod R (SwarmConfig.grpc_targets): the second's devices hear through LISTEN/NOTIFY.
    heard = [sorted(d.record.notices[deployment_id] - returned for d in swarm.devices[i::len(servers)]
                    if deployment_id in d.record.notices) for i in range(len(servers))]
    return {"deploy_call_s": returned - start, "deploy_call_cpu_s": call_cpu, "notice_p50_s": s["notice_p50_s"], "notice_p99_s": s["notice_p99_s"],
            "last_installed_s": (s["last_finished_s"] or 0) + (returned - start), "finished": finished,
            "noticed": s["noticed"], "outcomes": s["outcomes"], "errors": s["errors"], "first_errors": s["first_errors"],
            "calls": {k: v - calls0.get(k, 0) for k, v in s["calls"].items() if v - calls0.get(k, 0)},
            "server_cpu_s": sum(cpu), "cpu_s_per_server": cpu,
            "server_rss_mb": sum(rss_mb(server.pid) for server in servers), "devices_cpu_s": own,
            "notice_p50_p99_s_per_server": [p50_p99(h) for h in heard if len(h) > 1]}


def rollout(args: argparse.Namespace) -> None:
    for devices in args.devices:
        with tempfile.TemporaryDirectory(prefix="fleetcast-swarm-") as tmp, ExitStack() as stack:
            root = Path(tmp)
            paths = [models.write(models.sized_model(args.megabytes, seed=7 + i), root / f"m{i}.onnx")
                     for i in range(args.repeat)]
            extra: list[str] = []
            if args.download == "direct" or args.store:   # one blobs dir, outside the data dir(s)
                (root / "blobs").mkdir()
                extra = ["--blobs", str(root / "blobs")]
            if args.download == "direct":    # a plain static file server over the blob dir stands in for a CDN
                extra += ["--download-base-url", stack.enter_context(serving_directory(root / "blobs"))]
            if args.store:
                extra += ["--store", stack.enter_context(postgres_database(args.store))]
            # --mqtt: a private Mosquitto with the repo's config and ACL; the server bridges to it.
            broker = Broker(root / "broker", verbose=False).start() if args.mqtt else None
            mqtt_url = broker.url if broker else None
            server = (ProfiledServer(root / "server", extra_args=extra, profile=args.cprofile, mqtt_url=mqtt_url)
                      if args.cprofile else ServerProcess(root / "server", extra_args=extra, mqtt_url=mqtt_url)).start()
            mqtt = MqttConfig(url=broker.url, ca=broker.ca_path, key_dir=root / "device-keys") if broker else None
            servers = [server]
            try:
                if args.replicas == 2:
                    servers.append(second_replica(server, root / "second", extra))
                with server.client() as fc:
                    versions = [fc.push_model(p, name="bench").version for p in paths]
                runs, plains, plain_cpus = asyncio.run(_rollouts(servers, devices, versions, paths[0], args,
                                                     lambda: profiler(server.pid, args.profile), mqtt))
            finally:
                for s in reversed(servers):
                    s.stop()
                if broker is not None:
                    broker.stop()
                if args.server_log is not None:
                    shutil.copyfile(server.log_path, args.server_log)
        for r in runs:
            print(f"devices={devices} deploy_call_s={r['deploy_call_s']:.3f} "
              f"deploy_call_server_cpu_s={r['deploy_call_cpu_s']:.3f} notice_p50_s={r['notice_p50_s']:.2f} "
                  f"notice_p99_s={r['notice_p99_s']:.2f} last_installed_s={r['last_installed_s']:.2f} "
                  f"server_cpu_ms_per_device={1000 * r['server_cpu_s'] / devices:.1f} "
                  f"simulator_cpu_ms_per_device={1000 * r['devices_cpu_s'] / devices:.1f} rss_mb={r['server_rss_mb']:.0f} "
                  f"cpu_s_per_server={','.join(f'{c:.2f}' for c in r['cpu_s_per_server'])} "
                  f"notice_p50_p99_s_per_server={','.join(f'{a:.2f}/{b:.2f}' for a, b in r['notice_p50_p99_s_per_server'])} "
                  f"noticed={r['noticed']} outcomes={r['outcomes']} errors={r['errors']} calls={r['calls']} {r['first_errors'][:1]}")
        med = {k: statistics.median(r[k] for r in runs) for k in
               ("deploy_call_s", "deploy_call_cpu_s", "notice_p50_s", "notice_p99_s", "last_installed_s", "server_cpu_s",
                "devices_cpu_s")}
        plain = statistics.median(plains) if plains else float("nan")
        plain_cpu = statistics.median(plain_cpus) if plain_cpus else float("nan")
        ratios = [r["last_installed_s"] / p for r, p in zip(runs, plains)]
        print(f"RESULT rollout devices={devices} via={'mqtt' if args.mqtt else 'grpc'} model_mb={args.megabytes} "
              f"store={'postgresql' if args.store else 'sqlite'} replicas={args.replicas} "
              f"calls={args.calls} download={args.download} runs={len(runs)} "
              f"deploy_call_s={med['deploy_call_s']:.3f} deploy_call_server_cpu_s={med['deploy_call_cpu_s']:.3f} "
              f"notice_p50_s={med['notice_p50_s']:.2f} "
              f"notice_p99_s={med['notice_p99_s']:.2f} last_installed_s={med['last_installed_s']:.2f} "
              f"plain_http_s={plain:.2f} plain_sha256={args.plain_sha256} ratio={med['last_installed_s'] / plain:.2f} "
              f"per_run_ratios={','.join(f'{x:.2f}' for x in ratios)} "
              f"plain_http_cpu_ms_per_device={1000 * plain_cpu / devices:.2f} "
              f"server_cpu_ms_per_device={1000 * med['server_cpu_s'] / devices:.1f} "
              f"simulator_cpu_ms_per_device={1000 * med['devices_cpu_s'] / devices:.1f}", flush=True)


async def _rollouts(servers: list[ServerProcess], devices: int, versions: list[str], path: Path,
                    args: argparse.Namespace, start_profile: Any,
                    mqtt: MqttConfig | None = None) -> tuple[list[dict[str, Any]], list[float], list[float]]:
    swarm = swarm_for(servers[0], devices, bundled=args.calls == "bundled",
                      direct_download=args.download == "direct", mqtt=mqtt,
                      replicas=tuple(servers) if len(servers) > 1 else ())
    try:
        enroll_s = await swarm.enroll()
        swarm.start(telemetry=False)
        watching = await swarm.wait_watching(args.timeout_s)
        print(f"devices={devices} enrolled={len(swarm.enrolled())} in {enroll_s:.1f} s watching={watching} "
              f"via={'mqtt' if mqtt else 'grpc'} errors={swarm.summary()['first_errors'][:1]}", flush=True)
        runs, plains, plain_cpus = [], [], []
        spy = start_profile()
        for version in versions:
            if devices <= args.plain_max:   # one thread per client: more would measure the backlog
                own0 = own_cpu_s()
                plains.append(await asyncio.to_thread(plain_http_download_s, path, devices, sha256=args.plain_sha256))
                plain_cpus.append(own_cpu_s() - own0)   # the static server and its clients: both in this process
            runs.append(await one_rollout(servers, swarm, version, args))
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=60)
        return runs, plains, plain_cpus
    finally:
        await swarm.close(grace_s=5)


def enroll(args: argparse.Namespace) -> None:
    for devices in args.devices:
        with tempfile.TemporaryDirectory(prefix="fleetcast-swarm-") as tmp:
            server = ServerProcess(Path(tmp) / "server").start()
            try:
                rss0 = rss_mb(server.pid)
                cpu0 = cpu_s(server.pid)

                async def storm() -> tuple[float, dict[str, Any]]:
                    swarm = swarm_for(server, devices)
                    try:
                        return await swarm.enroll(), swarm.summary()
                    finally:
                        await swarm.close(grace_s=0)
                took, summary = asyncio.run(storm())
                with server.client() as fc:
                    listed = len(fc.list_devices())
                print(f"RESULT enroll devices={devices} enrolled={summary['enrolled']} listed={listed} "
                      f"errors={summary['errors']} seconds={took:.1f} per_s={devices / took:.0f} "
                      f"server_cpu_ms_per_device={1000 * (cpu_s(server.pid) - cpu0) / devices:.2f} "
                      f"rss_mb_before={rss0:.0f} rss_mb_after={rss_mb(server.pid):.0f}", flush=True)
            finally:
                server.stop()


def telemetry(args: argparse.Namespace) -> None:
    from benchmarks.telemetry_ingest import compare, profile_flush
    if args.profile_flushes:
        print(profile_flush(rows=args.rows, senders=args.senders, rows_per_batch=args.rows_per_batch,
                            flushes=args.profile_flushes, store_url=args.store), flush=True)
        return
    for _ in range(args.repeat):
        print(compare(rows=args.rows, senders=args.senders, rows_per_batch=args.rows_per_batch, store_url=args.store),
              flush=True)


def main() -> None:
    collector.tune()   # the simulator's 10,000 devices, as the server does for its streams
    # 10,000 MQTT devices: a socket each here and in the broker (which inherits the limit).
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rollout")
    r.add_argument("--devices", type=int, nargs="+", default=[100])
    r.add_argument("--megabytes", type=float, default=1.0)
    r.add_argument("--repeat", type=int, default=3)
    r.add_argument("--timeout-s", type=float, default=900.0)
    r.add_argument("--until", choices=("installed", "noticed"), default="installed",
                   help="end each run when every device installed (default) or was told")
    r.add_argument("--calls", choices=("bundled", "per-file"), default="bundled",
                   help="devices read metadata in one FetchMetadataBundle per check and send the steps they "
                        "hold in one ReportStatuses (default), or one FetchMetadata per file and one "
                        "ReportStatus per step (agents before those calls)")
    r.add_argument("--download", choices=("grpc", "direct"), default="grpc",
                   help="artifacts through the server's gRPC Download (default) or from the URL LocateArtifact "
                        "hands out (a plain static file server over the blob dir, the baseline's kind)")
    r.add_argument("--plain-max", type=int, default=2000, help="skip the plain HTTP run above this many devices")
    r.add_argument("--profile", type=Path, help="py-spy output of the server process (.svg or .json)")
    r.add_argument("--cprofile", type=Path, help="cProfile output of the server process (its event-loop thread), "
                   "where py-spy cannot attach")
    r.add_argument("--plain-sha256", action="store_true", help="the plain HTTP clients also hash what they "
                   "fetched and check it (as the simulated devices and any installer do)")
    r.add_argument("--server-log", type=Path, help="keep a copy of the server's log (-v) here")
    r.add_argument("--store", metavar="URL", nargs="?", const=POSTGRES,
                   help=f"the server on a fresh PostgreSQL database made (and dropped) on that server (no URL: "
                        f"{POSTGRES}) and a blobs dir outside its data dir; default SQLite in the data dir")
    r.add_argument("--replicas", type=int, choices=(1, 2), default=1,
                   help="2: a second server on the same --store database and blobs, with the first's keys, TLS "
                        "and tokens; half the devices on each; deploys go through the first")
    r.add_argument("--mqtt", action="store_true", help="devices hear their notices over MQTT from a private "
                   "Mosquitto (deploy/mosquitto config and ACL, a certificate per device); the server bridges to it")
    e = sub.add_parser("enroll")
    e.add_argument("--devices", type=int, nargs="+", default=[10_000])
    t = sub.add_parser("telemetry")
    t.add_argument("--rows", type=int, default=200_000)
    t.add_argument("--senders", type=int, default=500)
    t.add_argument("--rows-per-batch", type=int, default=4)
    t.add_argument("--repeat", type=int, default=3)
    t.add_argument("--store", metavar="URL", help="postgresql://USER@HOST:PORT/DB: ingest into a fresh database "
                   "made (and dropped) on that server; default a fresh SQLite file")
    t.add_argument("--profile-flushes", type=int, metavar="N", help="profile the store's flush alone instead: "
                   "the rows in N calls of ingest_telemetry_many, cProfile in one thread")
    args = p.parse_args()
    if args.command == "rollout" and args.store and not args.store.startswith(("postgresql://", "postgres://")):
        p.error("rollout --store takes a postgresql:// URL (SQLite is the default)")
    if args.command == "rollout" and args.replicas > 1 and (not args.store or args.mqtt):
        p.error("--replicas 2 needs --store (one PostgreSQL database for both) and gRPC notices (no --mqtt)")
    {"rollout": rollout, "enroll": enroll, "telemetry": telemetry}[args.command](args)


if __name__ == "__main__":
    main()
