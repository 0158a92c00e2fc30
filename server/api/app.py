"""The app factory: one `Services`, the route table, and the background services.

`cleanup_ctx` order (started top-down, stopped bottom-up): services (store, hub),
compression jobs, gRPC server, MQTT bridge, director assigner, timestamp refresher. A failed start never runs the
teardown of something that did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from aiohttp import web
from google.protobuf.message import DecodeError

from fleetcast.proto.v1 import device_pb2 as pb
from fleetcast.server import assigner, refresher
from fleetcast.server.api import openapi
from fleetcast.server.api.keys import ADDRESSES, DEVICE_ID, OPENAPI, SERVICES, Addresses
from fleetcast.server.api.routes import ROUTES, Handler, Route
from fleetcast.server.config import ServerConfig
from fleetcast.server.deployments import StatusUpdate
from fleetcast.server.errors import FleetcastError, Unauthenticated, http_status
from fleetcast.server.grpc_service import start_grpc
from fleetcast.server.notify import MqttBridge, mqtt_client_id
from fleetcast.server.services import Services, open_services
from fleetcast.server.telemetry import Batch

logger = logging.getLogger(__name__)

MAX_JSON_BYTES: Final = 1024 * 1024
HTTP_CODES: Final = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 416: "out_of_range"}


def _error_body(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except FleetcastError as e:
        status = http_status(e)
        if status >= 500:
            logger.error("request failed path=%s error=%s", request.path, e)
        response = _error_body(status, e.code, e.message)
        if isinstance(e, Unauthenticated):
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = HTTP_CODES.get(e.status, "http_error")
        return _error_body(e.status, code, f"{e.reason}: {request.method} {request.path}")
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception:
        logger.exception("request crashed path=%s", request.path)
        return _error_body(500, "internal", "the server failed on this request; see its log")


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    return value[len("Bearer "):].strip() if value.startswith("Bearer ") else None


def guard(route: Route) -> Handler:
    """Wraps a handler with the auth its route row names."""
    handler = route.handler

    async def operator(request: web.Request) -> web.StreamResponse:
        token = _bearer(request) or ""
        expected = request.app[SERVICES].operator_token
        if not hmac.compare_digest(token.encode()[:512], expected.encode()):
            raise Unauthenticated("operator token missing or wrong: send 'Authorization: Bearer <DATA/operator-token>'")
        return await handler(request)

    async def device(request: web.Request) -> web.StreamResponse:
        fleet = request.app[SERVICES].fleet
        request[DEVICE_ID] = await asyncio.to_thread(fleet.authenticate, _bearer(request))
        return await handler(request)

    return {"operator": operator, "device": device, "public": handler}[route.auth]


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    services.hub.bind(asyncio.get_running_loop())
    yield
    services.hub.close()
    services.close()


async def builds_ctx(app: web.Application) -> AsyncIterator[None]:
    """Background compression jobs: stopped (and awaited) before the store closes."""
    services = app[SERVICES]
    builds = services.registry.builds
    builds.bind(asyncio.get_running_loop())
    yield
    await builds.close(services.config.compress_stop_grace_s)


async def grpc_ctx(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    config = services.config
    server, port = await start_grpc(services, config.grpc_host, config.grpc_port)
    app[ADDRESSES].grpc = f"{config.grpc_host}:{port}"
    yield
    services.hub.close()  # ends open WatchAssignments streams cleanly before the grace period
    await server.stop(config.grpc_grace_s)


def _upstream(services: Services) -> tuple[object, object]:
    """The MQTT bridge's handlers: status and telemetry stored as if they came over gRPC."""

    def handler(kind: str, parse: Callable[[bytes], Any], apply: Callable[[str, Any], Any]) -> object:
        async def handle(device_id: str, payload: bytes) -> None:
            if await asyncio.to_thread(services.store.device, device_id) is None:
                logger.warning("mqtt %s dropped: device_id=%s is not enrolled", kind, device_id)
                return
            try:
                message = parse(payload)
            except DecodeError as e:
                logger.warning("mqtt %s dropped device_id=%s: not a %s message (%s)", kind, device_id, kind, e)
                return
            await asyncio.to_thread(apply, device_id, message)
        return handle

    return (
        handler("status", lambda p: StatusUpdate.from_message(pb.StatusReport.FromString(p)),
                services.deployments.apply_status),
        handler("telemetry", lambda p: Batch.from_message(pb.TelemetryBatch.FromString(p)),
                services.telemetry.ingest),
    )


async def mqtt_ctx(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    on_status, on_telemetry = _upstream(services)
    bridge = MqttBridge(services.config.mqtt_url or "", loop=asyncio.get_running_loop(),
                        on_status=on_status, on_telemetry=on_telemetry,  # type: ignore[arg-type]
                        client_id=mqtt_client_id(services.config.data_dir))
    bridge.start()
    services.hub.add_sink(bridge)
    yield
    services.hub.remove_sink(bridge)
    await asyncio.to_thread(bridge.stop)


async def assigner_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(assigner.run(app[SERVICES].deployments))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def refresher_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(refresher.run(app[SERVICES]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(config: ServerConfig) -> web.Application:
    services = open_services(config)
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_JSON_BYTES)
    app[SERVICES] = services
    app[ADDRESSES] = Addresses()
    app[OPENAPI] = openapi.document(ROUTES, server_url=config.public_url)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, guard(route), name=route.operation_id)
    app.cleanup_ctx.append(services_ctx)
    app.cleanup_ctx.append(builds_ctx)
    app.cleanup_ctx.append(grpc_ctx)
    if config.mqtt_url:
        app.cleanup_ctx.append(mqtt_ctx)
    app.cleanup_ctx.append(assigner_ctx)
    if config.refresh_interval_s > 0:
        app.cleanup_ctx.append(refresher_ctx)
    return app
