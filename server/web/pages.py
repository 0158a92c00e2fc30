"""The dashboard's handlers: thin, like the REST API's (parse, call a view, render).

`guarded` wraps each handler with the access its route row names: `public` (the
login page), `viewer` (any session) or `operator` (a session that may change state;
its forms must carry the session's CSRF token and, when the browser sends one, an
Origin of this server). Errors render as an HTML page with the status the error
tree gives; nothing here builds an error by hand.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qsl, quote

from aiohttp import web

from fleetcast.proto.addresses import is_loopback
from fleetcast.server import documents
from fleetcast.server.errors import FleetcastError, Forbidden, InvalidRequest, TooLarge, Unauthenticated, http_status
from fleetcast.server.web import views
from fleetcast.server.web.devicefilter import DeviceFilter
from fleetcast.server.web.keys import DASHBOARD, SESSION, Dashboard
from fleetcast.server.web.render import html
from fleetcast.server.web.sessions import COOKIE, LOGIN_COOKIE, Session, same_token

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_FORM_BYTES: Final = 8 * 1024
CSV_CHUNK_ROWS: Final = 1000
CSV_COLUMNS: Final = ("id", "liveness", "last_seen", "hardware_class", "group", "active_model", "state",
                      "agent_version", "last_error")


def _dashboard(request: web.Request) -> Dashboard:
    return request.app[DASHBOARD]


def _context(request: web.Request, **values: Any) -> dict[str, Any]:
    session = request.get(SESSION)
    return {"session": session, "path": request.path, "nav": _dashboard(request).nav, **values}


def _page(request: web.Request, template: str, *, status: int = 200, **values: Any) -> web.Response:
    block = "live" if request.headers.get("HX-Request") == "true" and request.query.get("part") == "live" else None
    return html(_dashboard(request).env, template, _context(request, **values), status=status, block=block)


async def _form(request: web.Request) -> dict[str, str]:
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise TooLarge(f"a dashboard form is at most {MAX_FORM_BYTES} bytes")
    if request.content_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("send the form as application/x-www-form-urlencoded (the dashboard's own forms do)")
    body = await request.content.read(MAX_FORM_BYTES + 1)
    if len(body) > MAX_FORM_BYTES:
        raise TooLarge(f"a dashboard form is at most {MAX_FORM_BYTES} bytes")
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), max_num_fields=16))


def _check_origin(request: web.Request) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise Forbidden(f"a form from {origin[:80]!r} cannot change this server; use the dashboard's own pages")


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _secure(request: web.Request) -> bool:
    return request.secure or not is_loopback(request.host.rpartition(":")[0] or request.host)


def _error_page(request: web.Request, e: FleetcastError) -> web.Response:
    """The error as a page, or as the live section a refresh asked for (it says what went wrong in place)."""
    return _page(request, "error.html", status=http_status(e), error=e, status_code=http_status(e))


def guarded(handler: Handler, access: str) -> Handler:
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            if access != "public":
                session = _dashboard(request).sessions.get(request.cookies.get(COOKIE))
                if session is None:
                    if request.method == "GET":
                        login = "/ui/login?next=" + quote(_next(request.path_qs), safe="/")
                        if request.headers.get("HX-Request") == "true":   # a live refresh: the whole page goes
                            return web.Response(status=204, headers={"HX-Redirect": login})
                        return _redirect(login)
                    raise Unauthenticated("log in first: your session ended or was never opened")
                request[SESSION] = session
                if request.method != "GET":
                    _check_origin(request)
                if access == "operator" and not session.can_change:
                    raise Forbidden("a viewer session can look but not change anything; log in with the operator token")
            return await handler(request)
        except FleetcastError as e:
            return _error_page(request, e)
    run.__name__ = handler.__name__
    return run


async def _changing_form(request: web.Request) -> dict[str, str]:
    """The form of a state-changing request, after its CSRF token is checked."""
    form = await _form(request)
    session: Session = request[SESSION]
    if not same_token(form.get("csrf", ""), session.csrf):
        raise Forbidden("the form's CSRF token is missing or stale; reload the page and submit again")
    return form


# -- login ----------------------------------------------------------------------------

def _next(value: str) -> str:
    return value if value.startswith("/ui/") and not value.startswith("//") and "\\" not in value else "/ui/"


async def login_form(request: web.Request) -> web.StreamResponse:
    if _dashboard(request).sessions.get(request.cookies.get(COOKIE)) is not None:
        return _redirect(_next(request.query.get("next", "/ui/")))
    return _login_page(request, next_url=_next(request.query.get("next", "/ui/")))


def _login_page(request: web.Request, *, next_url: str, error: str = "", status: int = 200) -> web.Response:
    nonce = secrets.token_urlsafe(24)
    response = _page(request, "login.html", status=status, login_csrf=nonce, next_url=next_url, error=error)
    response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", secure=_secure(request),
                        path="/ui/login", max_age=3600)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    dash = _dashboard(request)
    address = request.remote or "unknown"
    dash.throttle.check(address)
    _check_origin(request)
    form = await _form(request)
    next_url = _next(form.get("next", "/ui/"))
    if not same_token(form.get("login_csrf", ""), request.cookies.get(LOGIN_COOKIE, "")):
        raise Forbidden("the login form expired or came from elsewhere; reload the login page and try again")
    role = dash.role_of(form.get("token", "").strip())
    if role is None:
        dash.throttle.failed(address)
        await asyncio.sleep(dash.config.login_failure_delay_s)
        return _login_page(request, next_url=next_url, status=401,
                           error="that token is neither the operator token nor a viewer token")
    dash.throttle.succeeded(address)
    cookie, _ = dash.sessions.open(role)
    response = _redirect(next_url)
    response.set_cookie(COOKIE, cookie, httponly=True, samesite="Strict", secure=_secure(request), path="/",
                        max_age=int(dash.config.session_ttl_s))
    response.del_cookie(LOGIN_COOKIE, path="/ui/login")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    await _changing_form(request)
    _dashboard(request).sessions.close(request.cookies.get(COOKIE))
    response = _redirect("/ui/login")
    response.del_cookie(COOKIE, path="/")
    return response


# -- pages ----------------------------------------------------------------------------

async def _view(request: web.Request, build: Callable[..., dict[str, Any]], *args: Any, **kw: Any) -> dict[str, Any]:
    return await asyncio.to_thread(build, _dashboard(request).services, *args, now=time.time(), **kw)


async def root(request: web.Request) -> web.StreamResponse:
    return _redirect("/ui/")


async def overview(request: web.Request) -> web.StreamResponse:
    return _page(request, "overview.html", **await _view(request, views.overview))


def _filter(request: web.Request) -> DeviceFilter:
    c = _dashboard(request).config
    return DeviceFilter.parse(request.query, default_per=c.page_size, max_per=c.max_page_size)


async def devices(request: web.Request) -> web.StreamResponse:
    return _page(request, "devices.html", **await _view(request, views.device_table, _filter(request)))


def _csv_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text   # no formulas in a spreadsheet


async def devices_csv(request: web.Request) -> web.StreamResponse:
    """Every device the filter selects (up to max_csv_rows), streamed a page at a time."""
    dash = _dashboard(request)
    f = _filter(request)
    now = time.time()
    response = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
                                           "Content-Disposition": 'attachment; filename="fleetcast-devices.csv"'})
    await response.prepare(request)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    sent = 0
    config = dash.services.config.liveness
    while sent < dash.config.max_csv_rows:
        limit = min(CSV_CHUNK_ROWS, dash.config.max_csv_rows - sent)
        query = dataclasses.replace(f.store_query(now=now, config=config), limit=limit, offset=sent)
        page = await asyncio.to_thread(dash.services.store.find_devices, query)
        for d in page.devices:
            row = documents.device_row(d, now=now, config=config)
            writer.writerow([_csv_cell(row[c]) for c in CSV_COLUMNS])
        await response.write(out.getvalue().encode())
        out.seek(0)
        out.truncate()
        sent += len(page.devices)
        if len(page.devices) < limit:
            break
    await response.write_eof()
    return response


async def device(request: web.Request) -> web.StreamResponse:
    return _page(request, "device.html", **await _view(request, views.device_page, request.match_info["id"],
                                                       window=request.query.get("window", "1h")))


async def models(request: web.Request) -> web.StreamResponse:
    return _page(request, "models.html", **await _view(request, views.models_page))


async def model(request: web.Request) -> web.StreamResponse:
    return _page(request, "model.html", **await _view(request, views.model_page, request.match_info["name"],
                                                      window=request.query.get("window", "1h")))


async def deployments(request: web.Request) -> web.StreamResponse:
    return _page(request, "deployments.html", **await _view(request, views.deployments_page))


async def deployment(request: web.Request) -> web.StreamResponse:
    raw = request.query.get("page", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidRequest("'page' must be a whole number from 1")
    return _page(request, "deployment.html",
                 **await _view(request, views.deployment_page, request.match_info["id"], page=int(raw)))


async def rollouts(request: web.Request) -> web.StreamResponse:
    return _page(request, "rollouts.html", **await _view(request, views.rollouts_page))


async def rollout(request: web.Request) -> web.StreamResponse:
    return _page(request, "rollout.html", **await _view(request, views.rollout_page, request.match_info["id"]))


async def cancel_deployment(request: web.Request) -> web.StreamResponse:
    await _changing_form(request)
    d = _dashboard(request).services.deployments
    cancelled = await asyncio.to_thread(d.cancel, request.match_info["id"])
    return _redirect(f"/ui/deployments/{quote(cancelled.deployment_id)}")


async def events(request: web.Request) -> web.StreamResponse:
    """`text/event-stream`: the current documents first, then each change (see events.py)."""
    dash = _dashboard(request)
    with dash.events.subscribe() as sub:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), dash.config.event_heartbeat_s)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if event is None:
                    break
                await response.write(event.encode())
        except (ConnectionResetError, ConnectionError):
            pass   # the browser went away
    return response
