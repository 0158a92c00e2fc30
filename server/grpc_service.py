"""The device side of the server: `fleetcast.v1.DeviceService` on grpc.aio.

Every call but Enroll authenticates `authorization: Bearer <device token>`.
Handlers parse, call the domain (in a worker thread when it touches storage or
keys) and answer; domain errors become status codes through `errors.grpc_code`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, NoReturn, TypeVar

import grpc

from fleetcast.proto.v1 import device_pb2 as pb
from fleetcast.proto.v1 import device_pb2_grpc as pb_grpc
from fleetcast.server.blobs import check_sha256
from fleetcast.server.deployments import StatusUpdate
from fleetcast.server.errors import (
    ArtifactNotFound,
    FleetcastError,
    InvalidRequest,
    OutOfRange,
    Unauthenticated,
    grpc_code,
)
from fleetcast.server.fleet import Enrollment, read_metadata
from fleetcast.server.services import Services
from fleetcast.server.telemetry import Batch

logger = logging.getLogger(__name__)

CHUNK_BYTES: Final = 256 * 1024
MAX_RECEIVE_BYTES: Final = 1024 * 1024
MAX_SEND_BYTES: Final = 16 * 1024 * 1024
REPOSITORIES: Final = {pb.REPOSITORY_IMAGE: "image", pb.REPOSITORY_DIRECTOR: "director"}

F = TypeVar("F", bound=Callable[..., Any])


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

    @unary
    async def Enroll(self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext) -> pb.EnrollResponse:
        enrollment = Enrollment(
            device_id=request.device_id, hardware_class=request.hardware_class, enroll_token=request.enroll_token,
            backends=tuple(request.backends), agent_version=request.agent_version, group=request.group,
            labels=dict(request.labels),
        )
        token = await asyncio.to_thread(self.s.fleet.enroll, enrollment)
        # A new device joins the fleet's newest deployment to all (or to its group).
        await asyncio.to_thread(self.s.deployments.join, enrollment.device_id)
        return pb.EnrollResponse(device_token=token)

    @streaming
    async def WatchAssignments(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AssignmentNotice]:
        device_id = await self._device(context)
        if request.device_id and request.device_id != device_id:
            raise Unauthenticated(f"this token belongs to device {device_id!r}, not {request.device_id[:80]!r}")
        with self.s.hub.watch(device_id) as watcher:
            current = await asyncio.to_thread(self.s.deployments.current_notice, device_id)
            yield pb.AssignmentNotice(director_version=current.director_version, deployment_id=current.deployment_id)
            while (notice := await watcher.next()) is not None:
                yield pb.AssignmentNotice(director_version=notice.director_version, deployment_id=notice.deployment_id)
        logger.debug("watch ended device_id=%s", device_id)

    @unary
    async def FetchMetadata(self, request: pb.MetadataRequest, context: grpc.aio.ServicerContext) -> pb.MetadataResponse:
        device_id = await self._device(context)
        repository = REPOSITORIES.get(request.repository)
        if repository is None:
            raise InvalidRequest("repository must be REPOSITORY_IMAGE or REPOSITORY_DIRECTOR")
        data = await asyncio.to_thread(
            read_metadata, self.s.signer, repository=repository, name=request.name[:128], device_id=device_id
        )
        return pb.MetadataResponse(data=data)

    @unary
    async def ReportStatus(self, request: pb.StatusReport, context: grpc.aio.ServicerContext) -> pb.StatusAck:
        device_id = await self._device(context)
        await asyncio.to_thread(self.s.deployments.apply_status, device_id, StatusUpdate.from_message(request))
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
        await self._device(context)
        sha256 = check_sha256(request.sha256)
        artifact = await asyncio.to_thread(self.s.store.artifact, sha256)
        if artifact is None:
            raise ArtifactNotFound(f"artifact {sha256} is not known to this server")
        if request.offset > artifact.length:
            raise OutOfRange(f"offset {request.offset} is past the artifact's {artifact.length} bytes")
        end = artifact.length if request.length == 0 else min(artifact.length, request.offset + request.length)
        offset = request.offset
        with self.s.blobs.open(sha256) as f:
            f.seek(offset)
            while offset < end:
                data = f.read(min(CHUNK_BYTES, end - offset))
                if not data:
                    break
                yield pb.Chunk(offset=offset, data=data)
                offset += len(data)


async def start_grpc(services: Services, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Starts the servicer; returns the server and the port it bound (port 0 picks one)."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ])
    pb_grpc.add_DeviceServiceServicer_to_server(DeviceService(services), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"gRPC cannot listen on {host}:{port}")
    await server.start()
    logger.info("grpc serving address=%s:%d", host, bound)
    return server, bound
