"""Handlers for monitoring systems: liveness, readiness and Prometheus metrics, plus the request-metrics middleware."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from fleetcast.server import health, metrics
from fleetcast.server.api.keys import METRICS, SERVICES

READY_TIMEOUT_S: Final = 5.0
UNMATCHED: Final = "unmatched"  # requests that match no route share one label value


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers HTTP. Says nothing about the store (that is /readyz)."""
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    try:
        result = await asyncio.wait_for(asyncio.to_thread(health.readiness, s), READY_TIMEOUT_S)
    except TimeoutError:
        result = health.timed_out(health.PROBES, READY_TIMEOUT_S)
    return web.json_response(result.document(), status=200 if result.ready else 503)


async def prometheus(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(request.app[METRICS].render)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


def _route_label(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else UNMATCHED


@web.middleware
async def request_metrics(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        request.app[METRICS].observe_request(method=request.method, route=_route_label(request), status=status,
                                             seconds=time.perf_counter() - started)
