"""The device side of the server: `fleetcast.v1.DeviceService` on grpc.aio.

Every call but Enroll authenticates `authorization: Bearer <device token>`.
Handlers parse, call the domain (in a worker thread when it touches storage or
keys) and answer; domain errors become status codes through `errors.grpc_code`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, NoReturn, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fleetcast.proto.v1 import device_pb2 as pb
from fleetcast.proto.v1 import device_pb2_grpc as pb_grpc
from fleetcast.server.blobs import check_sha256
from fleetcast.server.deployments import StatusUpdate
from fleetcast.server.download_links import Location, locate
from fleetcast.server.errors import (
    ArtifactNotFound,
    FleetcastError,
    InvalidRequest,
    OutOfRange,
    Unauthenticated,
    grpc_code,
)
from fleetcast.server.fleet import Enrollment, read_metadata
from fleetcast.server.metadata_bundle import Trusted, make_bundle
from fleetcast.server.services import Services
from fleetcast.server.telemetry import Batch

logger = logging.getLogger(__name__)

CHUNK_BYTES: Final = 1024 * 1024   # a 1 MB artifact in one message: a call per MB, not per 256 KB
MAX_RECEIVE_BYTES: Final = 1024 * 1024
MAX_SEND_BYTES: Final = 16 * 1024 * 1024
MAX_STATUS_REPORTS: Final = 64
REPOSITORIES: Final = {pb.REPOSITORY_IMAGE: "image", pb.REPOSITORY_DIRECTOR: "director"}
REPOSITORY_ENUMS: Final = {name: number for number, name in REPOSITORIES.items()}

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")


def _known(repository: str | None) -> str:
    if repository is None:
        raise InvalidRequest("repository must be REPOSITORY_IMAGE or REPOSITORY_DIRECTOR")
    return repository


async def _abort(context: grpc.aio.ServicerContext, error: FleetcastError) -> NoReturn:
    await context.abort(grpc.StatusCode[grpc_code(error)], error.message)
    raise AssertionError("unreachable")  # context.abort always raises


def unary(method: F) -> F:
    @functools.wraps(method)
    async def wrapper(self: "DeviceService", request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except FleetcastError as e:
            await _abort(context, e)
    return wrapper  # type: ignore[return-value]


def streaming(method: F) -> F:
    @functools.wraps(method)
    async def wrapper(self: "DeviceService", request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in method(self, request, context):
                yield item
        except FleetcastError as e:
            await _abort(context, e)
    return wrapper  # type: ignore[return-value]


def bearer(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip()
    return None


class DeviceService(pb_grpc.DeviceServiceServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    async def _device(self, context: grpc.aio.ServicerContext) -> str:
        device_id = await asyncio.to_thread(self.s.fleet.authenticate, bearer(context))
        return device_id

    async def _as_device(self, context: grpc.aio.ServicerContext, work: Callable[[str], R]) -> R:
        """Authenticates the caller and runs `work(device_id)` in the same worker thread:
        one hop off the event loop per call, not two."""
        token = bearer(context)
        return await asyncio.to_thread(lambda: work(self.s.fleet.authenticate(token)))

    @unary
    async def Enroll(self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext) -> pb.EnrollResponse:
        enrollment = Enrollment(
            device_id=request.device_id, hardware_class=request.hardware_class, enroll_token=request.enroll_token,
            backends=tuple(request.backends), agent_version=request.agent_version, group=request.group,
            labels=dict(request.labels), csr=request.csr, proof=request.proof, proof_time=request.proof_time,
            backend_info={b.name: f"{b.version} on {b.accelerator}" + (f"; {b.detail}" if b.detail else "")
                          for b in request.backend_info},
        )
        enrolled = await asyncio.to_thread(self.s.fleet.enroll_device, enrollment)
        # A new device joins the fleet's newest deployment to all (or to its group).
        await asyncio.to_thread(self.s.deployments.join, enrollment.device_id)
        return pb.EnrollResponse(device_token=enrolled.device_token, certificate=enrolled.certificate)

    @streaming
    async def WatchAssignments(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AssignmentNotice]:
        device_id = await self._device(context)
        if request.device_id and request.device_id != device_id:
            raise Unauthenticated(f"this token belongs to device {device_id!r}, not {request.device_id[:80]!r}")
        # An open stream keeps the device online (fleetcast.server.liveness).
        await asyncio.to_thread(self.s.store.touch_device, device_id, time.time())
        with self.s.hub.watch(device_id) as watcher, self.s.presence.watching(device_id):
            current = await asyncio.to_thread(self.s.deployments.current_notice, device_id)
            yield pb.AssignmentNotice(director_version=current.director_version, deployment_id=current.deployment_id)
            while (notice := await watcher.next()) is not None:
                yield pb.AssignmentNotice(director_version=notice.director_version, deployment_id=notice.deployment_id,
                                          check_within_ms=notice.check_within_ms)
        await asyncio.to_thread(self.s.store.touch_device, device_id, time.time())
        logger.debug("watch ended device_id=%s", device_id)

    @unary
    async def FetchMetadata(self, request: pb.MetadataRequest, context: grpc.aio.ServicerContext) -> pb.MetadataResponse:
        repository = REPOSITORIES.get(request.repository)
        name = request.name[:128]
        data = await self._as_device(context, lambda device_id: read_metadata(
            self.s.signer, repository=_known(repository), name=name, device_id=device_id))
        return pb.MetadataResponse(data=data)

    @unary
    async def FetchMetadataBundle(self, request: pb.BundleRequest, context: grpc.aio.ServicerContext) -> pb.MetadataBundle:
        bundle = await self._as_device(context, lambda device_id: make_bundle(
            self.s.signer, device_id=device_id, trusted=_trusted(request)))
        return pb.MetadataBundle(
            files=[pb.MetadataFile(repository=REPOSITORY_ENUMS[f.repository], name=f.name, data=f.data)
                   for f in bundle.files],
            states=[pb.RepositoryState(repository=REPOSITORY_ENUMS[r], root=v) for r, v in bundle.roots.items()])

    @unary
    async def ReportStatus(self, request: pb.StatusReport, context: grpc.aio.ServicerContext) -> pb.StatusAck:
        return await self.ReportStatuses(pb.StatusReports(reports=[request]), context)

    @unary
    async def ReportStatuses(self, request: pb.StatusReports, context: grpc.aio.ServicerContext) -> pb.StatusAck:
        if len(request.reports) > MAX_STATUS_REPORTS:
            raise InvalidRequest(f"{len(request.reports)} status reports in one call, over {MAX_STATUS_REPORTS}: "
                                 "send the rest in another")

        def apply(device_id: str) -> None:   # after the token: a stranger learns nothing of the checks
            updates = [StatusUpdate.from_message(r).check() for r in request.reports]   # all before any is applied
            for report in request.reports:
                if report.device_id and report.device_id != device_id:
                    raise InvalidRequest(f"status report names device {report.device_id[:80]!r} "
                                         f"but was sent by {device_id!r}")
            for update in updates:
                self.s.deployments.apply_status(device_id, update)
        await self._as_device(context, apply)
        return pb.StatusAck()

    @streaming
    async def StreamTelemetry(
        self, request_iterator: AsyncIterator[pb.TelemetryBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TelemetryAck]:
        device_id = await self._device(context)
        async for batch in request_iterator:
            duplicate = await self.s.ingest.submit(device_id, Batch.from_message(batch))
            yield pb.TelemetryAck(batch_id=batch.batch_id, duplicate=duplicate)

    @streaming
    async def Download(self, request: pb.DownloadRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Chunk]:
        sha256 = request.sha256
        artifact = await self._as_device(context, lambda _: self.s.store.artifact(check_sha256(sha256)))
        if artifact is None:
            raise ArtifactNotFound(f"artifact {sha256} is not known to this server")
        if request.offset > artifact.length:
            raise OutOfRange(f"offset {request.offset} is past the artifact's {artifact.length} bytes")
        end = artifact.length if request.length == 0 else min(artifact.length, request.offset + request.length)
        offset = request.offset
        with await asyncio.to_thread(self.s.blobs.open, sha256, offset) as f:
            while offset < end:
                data = await asyncio.to_thread(f.read, min(CHUNK_BYTES, end - offset))
                if not data:
                    break
                yield pb.Chunk(offset=offset, data=data)
                offset += len(data)

    @unary
    async def LocateArtifact(self, request: pb.LocateRequest, context: grpc.aio.ServicerContext) -> pb.ArtifactLocation:
        sha256 = request.sha256
        config = self.s.config

        def find(_: str) -> Location:
            if self.s.store.artifact(check_sha256(sha256)) is None:
                raise ArtifactNotFound(f"artifact {sha256} is not known to this server")
            return locate(self.s.blobs, sha256, base_url=config.download_base_url,
                          expires_s=config.download_url_expires_s)
        found = await self._as_device(context, find)
        return pb.ArtifactLocation(url=found.url, expires_unix_s=found.expires_unix_s)


def _trusted(request: pb.BundleRequest) -> dict[str, Trusted]:
    """The request's versions by repository; raises InvalidRequest for an unknown or repeated one."""
    trusted: dict[str, Trusted] = {}
    for t in request.trusted:
        repository = _known(REPOSITORIES.get(t.repository))
        if repository in trusted:
            raise InvalidRequest(f"trusted versions name repository {repository} twice")
        trusted[repository] = Trusted(root=t.root, timestamp=t.timestamp, snapshot=t.snapshot,
                                      targets=t.targets, bin=t.bin)
    return trusted


def server_credentials(services: Services) -> grpc.ServerCredentials | None:
    """TLS with the server's certificate. gRPC cannot make client certificates optional
    on one port and Enroll comes before a device has one, so device calls authenticate
    with the bearer token over this channel (ADR 0005). None: plaintext, which the
    config allows only on loopback when asked for."""
    certs = services.certificates
    if not services.config.tls or certs is None:
        return None
    return grpc.ssl_server_credentials([(certs.server_key, certs.server_cert)], require_client_auth=False)


DEVICE_SERVICE: Final = pb.DESCRIPTOR.services_by_name["DeviceService"].full_name


def add_health_and_reflection(server: grpc.aio.Server, checker: health.aio.HealthServicer) -> None:
    """The standard grpc.health.v1 service (overall "" and DeviceService) and server reflection."""
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    reflection.enable_server_reflection(
        (DEVICE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)


async def start_grpc(
    services: Services, host: str, port: int, *, checker: health.aio.HealthServicer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Starts the servicer; returns the server and the port it bound (port 0 picks one).

    The port is opened without SO_REUSEPORT (gRPC's default allows it), so a second server
    on the same port fails to start instead of sharing the port with the first.
    `checker` answers grpc.health.v1: SERVING for "" and DeviceService once the port is
    bound; the caller calls `checker.enter_graceful_shutdown()` (NOT_SERVING) before
    the stop's grace period so balancers drain this replica first.
    """
    checker = checker or health.aio.HealthServicer()
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ])
    pb_grpc.add_DeviceServiceServicer_to_server(DeviceService(services), server)
    add_health_and_reflection(server, checker)
    credentials = server_credentials(services)
    address = f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    except RuntimeError:   # grpcio >= 1.50 raises where older ones returned 0
        bound = 0
    if bound == 0:
        raise OSError(f"gRPC cannot listen on {host}:{port}: the address is in use or not local "
                      "(another fleetcast server?); stop it or choose another --grpc")
    await server.start()
    for name in ("", DEVICE_SERVICE):
        await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info("grpc serving address=%s:%d tls=%s", host, bound, credentials is not None)
    return server, bound

