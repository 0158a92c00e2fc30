"""A plain static file server on loopback (http.server, a thread per request): the CDN
stand-in of the direct-download tests and benchmarks, and the plain-HTTP baseline."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024      # the default backlog of 5 would stall clients for a SYN retry
    daemon_threads = True


@contextmanager
def serving_directory(root: Path) -> Iterator[str]:
    """Serves the files below `root` for the block; yields the base URL (no trailing slash)."""
    httpd = _Server(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
