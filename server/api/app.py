"""The app factory: one `Services`, the route table, and the background services.

`cleanup_ctx` order (started top-down, stopped bottom-up): services (store, hub),
compression jobs, gRPC server, MQTT bridge, director assigner, rollout scheduler, timestamp
refresher. A failed start never runs the
teardown of something that did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web
from grpc_health.v1 import health

from fleetcast.proto.brokerauth import BrokerAuth
from fleetcast.server import assigner, liveness, refresher
from fleetcast.server import web as dashboard
from fleetcast.server.api import monitoring, openapi
from fleetcast.server.api.keys import ADDRESSES, DEVICE_ID, METRICS, OPENAPI, SERVICES, Addresses
from fleetcast.server.api.routes import ROUTES, Handler, Route
from fleetcast.server.rollouts import scheduler
from fleetcast.server.config import ServerConfig
from fleetcast.server.errors import FleetcastError, Unauthenticated, http_status
from fleetcast.server.grpc_service import start_grpc
from fleetcast.server.metrics import Metrics
from fleetcast.server.notify import MqttBridge, mqtt_client_id
from fleetcast.server.services import Services, open_services
from fleetcast.server.upstream import Upstream

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
        response = _error_body(e.status, code, f"{e.reason}: {request.method} {request.path}")
        if "Allow" in e.headers:   # a 405 must say which methods the resource has
            response.headers["Allow"] = e.headers["Allow"]
        return response
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

    async def metrics_reader(request: web.Request) -> web.StreamResponse:
        token = (_bearer(request) or "").encode()[:512]
        s = request.app[SERVICES]
        if not any(hmac.compare_digest(token, t.encode()) for t in (s.metrics_token, s.operator_token) if t):
            raise Unauthenticated("metrics token missing or wrong: send 'Authorization: Bearer <DATA/metrics-token>'")
        return await handler(request)

    async def device(request: web.Request) -> web.StreamResponse:
        fleet = request.app[SERVICES].fleet
        request[DEVICE_ID] = await asyncio.to_thread(fleet.authenticate, _bearer(request))
        return await handler(request)

    return {"operator": operator, "device": device, "public": handler, "metrics": metrics_reader}[route.auth]


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
    checker = health.aio.HealthServicer()
    server, port = await start_grpc(services, config.grpc_host, config.grpc_port, checker=checker)
    app[ADDRESSES].grpc = f"{config.grpc_host}:{port}"
    toucher = asyncio.create_task(liveness.run_toucher(
        services.presence, services.store, interval_s=config.liveness.touch_interval_s, clock=time.time))
    yield
    toucher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await toucher
    await checker.enter_graceful_shutdown()  # health says NOT_SERVING before the grace period
    services.hub.close()  # ends open WatchAssignments streams cleanly before the grace period
    await server.stop(config.grpc_grace_s)


def _upstream(services: Services) -> Upstream:
    """The MQTT bridge's handlers: status and telemetry stored as if they came over gRPC."""
    return Upstream(is_enrolled=lambda device_id: services.store.device(device_id) is not None,
                    apply_status=services.deployments.apply_status, ingest=services.telemetry.ingest)


async def mqtt_ctx(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    upstream = _upstream(services)
    certs = services.certificates
    auth = None if certs is None else BrokerAuth(ca=certs.server_ca_path, cert=certs.mqtt_client_paths[0],
                                                 key=certs.mqtt_client_paths[1])
    bridge = MqttBridge(services.config.mqtt_url or "", loop=asyncio.get_running_loop(),
                        on_status=upstream.status, on_telemetry=upstream.telemetry,
                        client_id=mqtt_client_id(services.config.data_dir), auth=auth)
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


async def rollouts_ctx(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    task = asyncio.create_task(scheduler.run(services.rollouts, period_s=services.config.rollout_look_s))
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
    app = web.Application(middlewares=[monitoring.request_metrics, error_middleware], client_max_size=MAX_JSON_BYTES)
    app[SERVICES] = services
    app[METRICS] = Metrics(services.store, config=config.liveness)
    app[ADDRESSES] = Addresses()
    app[OPENAPI] = openapi.document(ROUTES, server_url=config.public_url)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, guard(route), name=route.operation_id)
    app.cleanup_ctx.append(services_ctx)
    dashboard.install(app, services)   # after services: its live-update poller reads the store
    app.cleanup_ctx.append(builds_ctx)
    app.cleanup_ctx.append(grpc_ctx)
    if config.mqtt_url:
        app.cleanup_ctx.append(mqtt_ctx)
    app.cleanup_ctx.append(assigner_ctx)
    app.cleanup_ctx.append(rollouts_ctx)
    if config.refresh_interval_s > 0:
        app.cleanup_ctx.append(refresher_ctx)
    return app
