"""The web dashboard `fleetcast server` serves under /ui/ for people.

Server-rendered HTML (Jinja2, autoescaped) that reads without JavaScript; vendored,
pinned htmx (+ its SSE extension) and uPlot add live updates and plots where
JavaScript runs (`static/vendor/VENDORED.md`). A strict Content-Security-Policy
allows scripts and styles from this server only. Logins: the operator token or a
read-only viewer token (`fleetcast token create --viewer`) opens a session
(`sessions.py`). The pages read the same documents as the REST API
(`fleetcast.server.documents`).

Errors are the server's own tree (`fleetcast.server.errors`), rendered as HTML pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from fleetcast.server.services import Services
from fleetcast.server.viewertokens import ViewerTokens
from fleetcast.server.web import render, views
from fleetcast.server.web.events import Events
from fleetcast.server.web.keys import DASHBOARD, Dashboard
from fleetcast.server.web.pages import guarded
from fleetcast.server.web.routes import NAV, PAGES
from fleetcast.server.web.sessions import LoginThrottle, Sessions


def snapshot(services: Services) -> dict[str, Any]:
    """What live updates send: the fleet by liveness and the newest deployments' summaries."""
    fleet = views.fleet_summary(services, now=time.time())
    return {"fleet": {"total": fleet["total"], "liveness": fleet["liveness"], "hardware": fleet["hardware"],
                      "versions": fleet["versions"]},
            "deployments": views.recent_deployments(services)}


async def _events_ctx(app: web.Application) -> AsyncIterator[None]:
    events = app[DASHBOARD].events
    task = asyncio.create_task(events.run())
    yield
    events.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def install(app: web.Application, services: Services) -> None:
    """Adds the dashboard's routes, static files, headers and live-update poller to `app`."""
    config = services.config.dashboard
    app[DASHBOARD] = Dashboard(
        services=services, config=config, env=render.environment(),
        sessions=Sessions(ttl_s=config.session_ttl_s, max_sessions=config.max_sessions, clock=time.time),
        throttle=LoginThrottle(failures=config.login_failures, window_s=config.login_window_s, clock=time.time),
        viewer_tokens=ViewerTokens(services.config.data_dir),
        events=Events(snapshot=lambda: snapshot(services), max_subscribers=config.max_event_subscribers,
                      poll_s=config.event_poll_s),
        nav=NAV,
    )
    for page in PAGES:
        app.router.add_route(page.method, page.path, guarded(page.handler, page.access))
    app.router.add_static("/ui/static/", render.STATIC, append_version=False, follow_symlinks=False)
    app.on_response_prepare.append(render.security_headers)
    app.cleanup_ctx.append(_events_ctx)
    app.on_shutdown.append(_end_streams)


async def _end_streams(app: web.Application) -> None:
    """Open event streams end before the server waits for its handlers to finish."""
    app[DASHBOARD].events.close()
