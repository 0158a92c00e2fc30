"""A plain HTTP server on loopback that serves one payload with Range support and can cut
its first responses short: what the agent's HTTP and direct downloads are tested against."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RangedPayload(http.server.BaseHTTPRequestHandler):
    """Subclasses route in `do_GET` and answer with `send_payload()`."""

    payload = b""
    cut_first_response_at: list[int] = []   # byte counts after which the next responses break off

    def send_payload(self) -> None:
        start = int(rng.removeprefix("bytes=").split("-")[0]) if (rng := self.headers.get("Range")) else 0
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_first_response_at:
            self.wfile.write(body[:self.cut_first_response_at.pop(0)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(handler: type[RangedPayload]) -> Iterator[str]:
    """Runs `handler` on a free loopback port for the block; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
