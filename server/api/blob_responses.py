"""One blob as an HTTP response, with `Range` support, whatever store holds it.

A blob on this disk goes out with aiohttp's `FileResponse` (sendfile, ranges, ETags);
one in an object store is read from it in chunks (off the event loop) and streamed,
honouring a single `Range: bytes=a-b`, `a-` or `-n`.
"""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

from fleetcast.server.blobs import Blobs
from fleetcast.server.errors import OutOfRange

BINARY: Final = "application/octet-stream"
CHUNK_BYTES: Final = 256 * 1024


async def blob_response(request: web.Request, blobs: Blobs, sha256: str) -> web.StreamResponse:
    path = blobs.file_path(sha256)
    if path is not None:
        return web.FileResponse(path, headers={"Content-Type": BINARY})
    length = await asyncio.to_thread(blobs.length, sha256)
    start, stop = _span(request, length)
    response = web.StreamResponse(status=206 if "Range" in request.headers else 200, headers={
        "Content-Type": BINARY, "Accept-Ranges": "bytes", "Content-Length": str(stop - start)})
    if "Range" in request.headers:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{length}"
    await response.prepare(request)
    with await asyncio.to_thread(blobs.open, sha256, start) as f:
        offset = start
        while offset < stop:
            data = await asyncio.to_thread(f.read, min(CHUNK_BYTES, stop - offset))
            if not data:
                break
            await response.write(data)
            offset += len(data)
    await response.write_eof()
    return response


def _span(request: web.Request, length: int) -> tuple[int, int]:
    """[start, stop) the request asks for: all of it without `Range`."""
    if "Range" not in request.headers:
        return 0, length
    try:
        wanted = request.http_range
    except ValueError as e:
        raise OutOfRange(f"Range {request.headers['Range'][:60]!r} is not one 'bytes=START-[END]' span") from e
    start = wanted.start or 0
    if start < 0:
        start = max(0, length + start)
    stop = length if wanted.stop is None else min(wanted.stop, length)
    if start >= length or start >= stop:
        raise OutOfRange(f"Range {request.headers['Range'][:60]!r} is outside the artifact's {length} bytes")
    return start, stop
