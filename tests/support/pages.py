"""A static web server for the H5 pages, and Chromium driven by Playwright.

`StaticSite` serves only `examples/h5/` and `sdk/js/` of this checkout on 127.0.0.1
(the page imports the package by its relative path, as a page with no build step does).
`launch_chromium` starts Debian's `chromium` headless; Playwright's own browser
download is never used.
"""

from __future__ import annotations

import functools
import shutil
import threading
from collections.abc import Sequence
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SERVED_PREFIXES = ("/examples/h5/", "/sdk/js/")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync")


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript"}
    isolated = False

    def end_headers(self) -> None:
        if self.isolated:   # cross-origin isolation: the page's timer is not coarsened
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if not self.path.startswith(SERVED_PREFIXES) or ".." in self.path:
            self.send_error(404)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class StaticSite:
    def __init__(self, root: Path = REPO, *, isolated: bool = False) -> None:
        handler_class = type("Handler", (_Handler,), {"isolated": isolated})
        handler = functools.partial(handler_class, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def origin(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def __enter__(self) -> "StaticSite":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def chromium_binary() -> str:
    """Debian's chromium; fails with the install hint when it is missing."""
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found is None:
        raise AssertionError("chromium is missing: `make browser` (apt-get install -y chromium) installs it")
    return found


def launch_chromium(playwright: Any, extra_args: Sequence[str] = ()) -> Any:
    return playwright.chromium.launch(executable_path=chromium_binary(), headless=True,
                                      args=[*CHROMIUM_ARGS, *extra_args])
