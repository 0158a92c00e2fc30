"""One simulated device: enroll, watch, verify, download, report, send telemetry.

Every call goes over the real gRPC contract (`fleetcast.v1.DeviceService`). How a
device gets a channel and its credentials is in `connect` and `enroll` only, so a
change to device identity (key pairs, mutual TLS) changes those two functions.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

import grpc

from fleetcast.agent.trust import TrustRoot
from fleetcast.proto import telemetry as buckets
from fleetcast.proto.metadata_bundle import Absent, BundleError, BundleFiles
from fleetcast.proto.topics import AssignmentNotice, bounded_window_ms
from fleetcast.proto.v1 import device_pb2 as pb
from fleetcast.proto.v1 import device_pb2_grpc as pb_grpc
from fleetcast.server.simulator.cohort import Cohort
from fleetcast.server.simulator.direct import DirectDownloadError, DirectDownloads
from fleetcast.server.simulator.mqtt import DeviceKey
from fleetcast.server.simulator.verify import (
    RepositoryView,
    SignatureCache,
    VerificationError,
    agree,
    parse_root,
)

logger = logging.getLogger(__name__)

# Transport trouble and an overloaded server: a real agent retries these at its next check.
RETRYABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL,
                              grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN})
T = TypeVar("T")


class SimulatorError(Exception):
    """A device could not finish a step; the message names the device and the step."""


@dataclass(frozen=True)
class DeviceConfig:
    """What every simulated device shares. Times in seconds."""

    enroll_token: str
    trust_root: TrustRoot
    telemetry_interval_s: float = 10.0
    inferences_per_interval: int = 50
    rpc_timeout_s: float = 60.0
    retry_limit: int = 8
    retry_base_s: float = 0.2
    metadata_bundle: bool = True        # False: one FetchMetadata per file, as agents before the bundle
    report_batches: bool = True         # False: one ReportStatus per step, as agents before ReportStatuses
    direct_download: bool = False       # True: LocateArtifact, then the URL (CDN/object store); else gRPC Download
    max_artifact_bytes: int = 1024**3


@dataclass
class DeviceRecord:
    """What happened to one device, for the swarm's summary (times from time.monotonic)."""

    device_id: str
    cohort: str
    enrolled_at: float | None = None
    watching_at: float | None = None     # first notice on the watch stream
    notices: dict[str, float] = field(default_factory=dict)    # deployment -> first notice
    finished: dict[str, tuple[float, str]] = field(default_factory=dict)  # deployment -> (time, outcome)
    errors: list[str] = field(default_factory=list)
    retries: int = 0
    bytes_downloaded: int = 0
    telemetry_sent: int = 0          # inferences in batches the server acknowledged as new
    telemetry_errors: int = 0
    telemetry_batches: int = 0
    calls: dict[str, int] = field(default_factory=dict)   # rpc name -> calls answered (retries not counted)


def connect(target: str, server_ca: bytes | None) -> grpc.aio.Channel:
    """The channel a group of devices shares (HTTP/2 multiplexes their calls): TLS pinned to
    the server's CA, as an agent's is (ADR 0005); plaintext only when no CA is given, which
    only a server started with --insecure-loopback-plaintext answers."""
    options = [
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    scheme, _, addresses = target.partition(":")
    if scheme in ("ipv4", "ipv6") and "," in addresses:
        # Several replicas (ipv4:A,B, tried in order): the certificate names the host, not the list.
        host = addresses.split(",")[0].rpartition(":")[0].strip("[]")
        options.append(("grpc.default_authority", host))
    if server_ca is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(server_ca), options=options)


async def enroll(stub: pb_grpc.DeviceServiceStub, *, device_id: str, cohort: Cohort, enroll_token: str,
                 timeout_s: float, csr: bytes = b"") -> tuple[tuple[tuple[str, str], ...], bytes]:
    """Enrolls the device (with a CSR for its key when given); returns the call metadata
    that authenticates it from then on and the certificate issued for that key."""
    response = await stub.Enroll(pb.EnrollRequest(
        device_id=device_id, hardware_class=cohort.hardware, backends=list(cohort.backend_names()),
        enroll_token=enroll_token, agent_version="fleetcast-simulator", group=cohort.group,
        labels={"cohort": cohort.name}, csr=csr), timeout=timeout_s)
    return (("authorization", f"Bearer {response.device_token}"),), response.certificate


class SimulatedDevice:
    def __init__(self, *, device_id: str, cohort: Cohort, config: DeviceConfig, channel: grpc.aio.Channel,
                 cache: SignatureCache, seed: int, direct: DirectDownloads | None = None) -> None:
        self.record = DeviceRecord(device_id=device_id, cohort=cohort.name)
        self.device_id = device_id
        self.cohort = cohort
        self.config = config
        self.stub = pb_grpc.DeviceServiceStub(channel)
        self.rng = random.Random(seed)
        self.auth: tuple[tuple[str, str], ...] = ()
        self.image = RepositoryView("image", parse_root(config.trust_root.image_root, "image root"), cache)
        self.director = RepositoryView("director", parse_root(config.trust_root.director_root, "director root"),
                                       cache)
        self.key: DeviceKey | None = None     # set before enroll: enrolls with a CSR (MQTT devices)
        self.certificate = b""
        self.installed_sha256 = ""
        self.active_model = ""
        self.active_variant = ""
        self._wake = asyncio.Event()
        self._direct = direct if config.direct_download else None
        self._bundles = config.metadata_bundle    # off for good once a server answers UNIMPLEMENTED
        self._batches = config.report_batches     # the same for ReportStatuses

    # -- calls ----------------------------------------------------------------------------
    async def _call(self, step: str, make: Callable[[], Awaitable[T]]) -> T:
        """One call with the cohort's delay and injected failures, retried with backoff."""
        last = "no call made"
        for attempt in range(self.config.retry_limit + 1):
            if self.cohort.delay_ms:
                await asyncio.sleep(self.cohort.delay_s(self.rng))
            try:
                if self.rng.random() < self.cohort.call_error_rate:
                    raise _Injected()
                result = await make()
                rpc = step.split(" ", 1)[0]
                self.record.calls[rpc] = self.record.calls.get(rpc, 0) + 1
                return result
            except (_Injected, grpc.aio.AioRpcError) as e:
                if isinstance(e, grpc.aio.AioRpcError) and e.code() not in RETRYABLE:
                    raise SimulatorError(f"{self.device_id} {step}: {e.code().name} {e.details()}") from e
                last = "injected" if isinstance(e, _Injected) else f"{e.code().name} {(e.details() or '')[:120]}"
                self.record.retries += 1
                await asyncio.sleep(self.config.retry_base_s * 2**min(attempt, 5) * (0.5 + self.rng.random()))
        raise SimulatorError(f"{self.device_id} {step}: still failing after {self.config.retry_limit} retries "
                             f"(last: {last})")

    async def enroll(self) -> None:
        self.auth, self.certificate = await self._call("enroll", lambda: enroll(
            self.stub, device_id=self.device_id, cohort=self.cohort, enroll_token=self.config.enroll_token,
            timeout_s=self.config.rpc_timeout_s, csr=self.key.csr if self.key else b""))
        if self.key is not None and not self.certificate:
            raise SimulatorError(f"{self.device_id} enroll: the server issued no certificate for the device key")
        self.record.enrolled_at = time.monotonic()

    async def _fetch(self, repository: int, name: str) -> bytes | None:
        async def call() -> bytes | None:
            try:
                reply = await self.stub.FetchMetadata(pb.MetadataRequest(repository=repository, name=name),
                                                      metadata=self.auth, timeout=self.config.rpc_timeout_s)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    return None     # ngclient's way of saying "no newer root"
                raise
            return reply.data
        return await self._call(f"fetch {name}", call)

    async def _bundle(self) -> BundleFiles:
        """Every newer file of both repositories in one call; empty where the server has no bundle."""
        if not self._bundles:
            return BundleFiles()
        request = pb.BundleRequest(trusted=[
            pb.TrustedVersions(repository=repository, **view.versions(self.device_id))
            for repository, view in ((pb.REPOSITORY_IMAGE, self.image), (pb.REPOSITORY_DIRECTOR, self.director))])

        async def call() -> BundleFiles:
            try:
                reply = await self.stub.FetchMetadataBundle(request, metadata=self.auth,
                                                            timeout=self.config.rpc_timeout_s)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self._bundles = False      # an older server: FetchMetadata per file from now on
                    return BundleFiles()
                raise
            try:
                return BundleFiles.from_message(reply)
            except BundleError as e:
                raise VerificationError(f"metadata bundle refused: {e}") from e
        return await self._call("bundle", call)

    def _fetcher(self, bundle: BundleFiles, repository: int) -> Callable[[str], Awaitable[bytes | None]]:
        async def fetch(name: str) -> bytes | None:
            found = bundle.lookup(repository, name)
            if found is Absent.NO_SUCH_ROOT:
                return None
            if found is Absent.UNKNOWN:
                return await self._fetch(repository, name)
            return found
        return fetch

    def _step(self, deployment_id: str, state: str, event: str, *, final: bool = False,
              outcome: str = "", reason: str = "") -> pb.StatusReport:
        return pb.StatusReport(deployment_id=deployment_id, state=state, event=event, reason=reason,
                               timestamp_ms=int(time.time() * 1000), active_model=self.active_model,
                               final=final, outcome=outcome)

    async def _report(self, *steps: pb.StatusReport) -> None:
        """The steps in one ReportStatuses call, as an agent's spool sends what it holds;
        one ReportStatus each where the server has no ReportStatuses (or batching is off)."""
        if self._batches and len(steps) > 1:
            async def call() -> bool:
                try:
                    await self.stub.ReportStatuses(pb.StatusReports(reports=steps), metadata=self.auth,
                                                   timeout=self.config.rpc_timeout_s)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    self._batches = False
                    return False
                return True
            if await self._call("reports", call):
                return
        for step in steps:
            await self._call(f"report {step.state}", lambda: self.stub.ReportStatus(
                step, metadata=self.auth, timeout=self.config.rpc_timeout_s))

    # -- the update check -------------------------------------------------------------------
    async def check(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        bundle = await self._bundle()
        fetch_director = self._fetcher(bundle, pb.REPOSITORY_DIRECTOR)
        await self.director.refresh(fetch_director, now)
        target = await self.director.entry(fetch_director, self.device_id, now)
        if target is None or target.hashes.get("sha256") == self.installed_sha256:
            return
        fields = target.unrecognized_fields["custom"]["fleetcast"]
        deployment_id = str(fields.get("deployment_id", ""))
        image = await self.image.refresh(self._fetcher(bundle, pb.REPOSITORY_IMAGE), now)
        agree(target, image)
        sha256 = target.hashes["sha256"]
        if target.length > self.config.max_artifact_bytes:
            raise VerificationError(f"artifact is {target.length} bytes, over {self.config.max_artifact_bytes}")
        await self._download(sha256, target.length)
        # Downloaded and verified within moments: the agent's spool holds both when it sends.
        await self._report(self._step(deployment_id, "download", "success"),
                           self._step(deployment_id, "verify", "success"))
        if self.rng.random() < self.cohort.fail_rate:
            outcome, reason = "rolled_back", "simulated smoke test failure"
        else:
            outcome, reason = "installed", ""
            self.installed_sha256 = sha256
            self.active_model = f"{fields.get('model')}@{fields.get('version')}"
            self.active_variant = str(fields.get("variant", ""))
        self.installed_sha256 = sha256   # a device does not retry a version it rolled back
        await self._report(self._step(deployment_id, "idle", "success" if not reason else "failure",
                                      final=True, outcome=outcome, reason=reason))
        self.record.finished.setdefault(deployment_id, (time.monotonic(), outcome))

    async def _download(self, sha256: str, length: int) -> None:
        if self._direct is not None:
            location = await self._call("locate", lambda: self.stub.LocateArtifact(
                pb.LocateRequest(sha256=sha256), metadata=self.auth, timeout=self.config.rpc_timeout_s))
            if location.url:
                try:
                    self.record.bytes_downloaded += await self._direct.fetch(location.url, sha256=sha256,
                                                                             length=length)
                    self.record.calls["direct"] = self.record.calls.get("direct", 0) + 1
                    return
                except DirectDownloadError as e:    # as the agent does: this artifact over gRPC instead
                    logger.warning("device_id=%s %s: using the gRPC download", self.device_id, e)
        await self._grpc_download(sha256, length)

    async def _grpc_download(self, sha256: str, length: int) -> None:
        async def call() -> None:
            digest, got = hashlib.sha256(), 0
            async for chunk in self.stub.Download(pb.DownloadRequest(sha256=sha256), metadata=self.auth,
                                                  timeout=self.config.rpc_timeout_s):
                if chunk.offset != got or got + len(chunk.data) > length:
                    raise VerificationError(f"artifact chunk at {chunk.offset} is out of order or past {length} bytes")
                digest.update(chunk.data)
                got += len(chunk.data)
            if got != length or digest.hexdigest() != sha256:
                raise VerificationError(f"artifact {sha256[:12]} arrived as {got} bytes with another sha256")
            self.record.bytes_downloaded += got
        await self._call("download", call)

    # -- loops --------------------------------------------------------------------------
    async def watch(self) -> None:
        """Follows the watch stream, reconnecting when it breaks; wakes `update_loop`."""
        seen = -1
        attempt = 0
        while True:
            try:
                call = self.stub.WatchAssignments(pb.WatchRequest(device_id=self.device_id), metadata=self.auth)
                async for notice in call:
                    attempt = 0
                    if self.record.watching_at is None:
                        self.record.watching_at = time.monotonic()
                    self.hear(notice.deployment_id)
                    if notice.director_version != seen:
                        seen = notice.director_version
                        self._wake_within(notice.check_within_ms)
            except grpc.aio.AioRpcError as e:
                if e.code() not in RETRYABLE and e.code() != grpc.StatusCode.CANCELLED:
                    raise SimulatorError(f"{self.device_id} watch: {e.code().name} {e.details()}") from e
            attempt += 1
            self.record.retries += 1
            await asyncio.sleep(self.config.retry_base_s * 2**min(attempt, 5) * (0.5 + self.rng.random()))

    def hear(self, deployment_id: str) -> None:
        """Records a notice's arrival (the first per deployment)."""
        if deployment_id:
            self.record.notices.setdefault(deployment_id, time.monotonic())

    def subscribed(self) -> None:
        """The MQTT subscriptions are granted: this device now hears notices."""
        if self.record.watching_at is None:
            self.record.watching_at = time.monotonic()
        self._wake.set()   # as the agent on connect: a notice may have gone by meanwhile

    def heard_over_mqtt(self, notice: AssignmentNotice) -> None:
        """An MQTT notice (the device's own or the fleet's): look again, as the agent does."""
        self.hear(notice.deployment_id)
        self._wake_within(notice.check_within_ms)

    def _wake_within(self, check_within_ms: int) -> None:
        """Checks at once, or at a random moment within the notice's window, as the agent does."""
        window_s = bounded_window_ms(check_within_ms) / 1000.0
        if window_s <= 0:
            self._wake.set()
        else:
            asyncio.get_running_loop().call_later(self.rng.uniform(0.0, window_s), self._wake.set)

    async def update_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.check()
            except (SimulatorError, VerificationError) as e:
                self.record.errors.append(str(e)[:300])
                logger.warning("device check failed device_id=%s: %s", self.device_id, e)

    async def telemetry_loop(self, stop: asyncio.Event) -> None:
        """Sends a batch every interval until `stop` is set; a batch in flight is finished,
        so every batch the server stored is one this device saw acknowledged."""
        interval = self.config.telemetry_interval_s
        delay = self.rng.uniform(0, interval)      # spread the fleet over the interval
        while not await _stopped(stop, delay):
            if self.active_model:
                await self.send_telemetry()
            delay = interval

    async def send_telemetry(self) -> None:
        model, _, version = self.active_model.partition("@")
        n = self.config.inferences_per_interval
        histogram = buckets.empty()
        total_ms = 0.0
        for _ in range(n):
            latency = self.cohort.latency(self.rng, version)
            histogram[buckets.bucket_of(latency)] += 1
            total_ms += latency
        error_rate = self.cohort.errors_on(version)
        errors = sum(self.rng.random() < error_rate for _ in range(n))
        batch = pb.TelemetryBatch(batch_id=secrets.token_hex(8), device_id=self.device_id, stats=[pb.ModelStats(
            model=model, version=version, variant=self.active_variant, inferences=n, errors=errors,
            backend=next(iter(self.cohort.backend_names()), ""), latency=pb.LatencyHistogram(counts=histogram),
            latency_sum_ms=total_ms)])

        async def call() -> bool:
            stream = self.stub.StreamTelemetry(iter([batch]), metadata=self.auth, timeout=self.config.rpc_timeout_s)
            acks = [ack async for ack in stream]
            # An ack marked duplicate means an earlier try was stored and its ack lost.
            return any(a.batch_id == batch.batch_id for a in acks)
        try:
            if await self._call("telemetry", call):
                self.record.telemetry_sent += n
                self.record.telemetry_errors += errors
                self.record.telemetry_batches += 1
        except SimulatorError as e:
            self.record.errors.append(str(e)[:300])


async def _stopped(stop: asyncio.Event, delay_s: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), delay_s)
    except TimeoutError:
        return False
    return True


class _Injected(Exception):
    """A call the cohort's call_error_rate dropped before it reached the server."""
