"""Templates (Jinja2, autoescaped) and the headers every dashboard response carries.

Jinja2 rather than string templates: escaping is on for every value by default
(`autoescape=True`, `StrictUndefined` so a missing value is an error, not a blank),
pages share one layout by inheritance, and the live parts are blocks a fragment
request renders alone.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Final

import jinja2
from aiohttp import web

HERE: Final = Path(__file__).resolve().parent
TEMPLATES: Final = HERE / "templates"
STATIC: Final = HERE / "static"

# No inline script or style anywhere, no eval (htmx runs with allowEval off), nothing
# from another origin; forms post only here and no page can be framed. Referrers go to
# this server only: with `no-referrer` a browser sends `Origin: null` on form posts, and
# the Origin check of state-changing forms (pages.py) needs the real one.
CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY", "Cross-Origin-Opener-Policy": "same-origin",
}


def utc(at: float | None) -> str:
    if at is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def age(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    s = max(0.0, now - at)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit} ago"
    return f"{s:.0f} s ago"


def ms(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


def size(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(utc=utc, ms=ms, size=size)
    env.globals.update(age=age)
    return env


def html(env: jinja2.Environment, template: str, context: dict[str, Any], *, status: int = 200,
         block: str | None = None) -> web.Response:
    """Renders a page, or one of its blocks alone (the part a live update refreshes)."""
    t = env.get_template(template)
    if block is None:
        text = t.render(context)
    else:
        text = "".join(t.blocks[block](t.new_context(context)))
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every dashboard response, streams and errors included, gets the headers."""
    if request.path == "/" or request.path.startswith("/ui/"):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
