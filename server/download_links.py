"""Where a device downloads an artifact without the server: a CDN URL or a presigned one.

With `--download-base-url BASE` every artifact is at `BASE/sha256/ab/<sha256>` (the
blob layout, so a CDN fronts DATA/blobs/ or the S3 prefix alike) and the URL does not
expire. Otherwise an object store hands out presigned URLs valid for
`download_url_expires_s`; local blobs have none, and devices use the gRPC Download.
The URL carries no trust: the device checks the signed sha256 and length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fleetcast.server.blobs import Blobs, blob_key


@dataclass(frozen=True)
class Location:
    url: str                 # empty: no direct URL, use the gRPC Download
    expires_unix_s: int = 0  # 0: does not expire


def locate(blobs: Blobs, sha256: str, *, base_url: str | None, expires_s: int,
           now: float | None = None) -> Location:
    if base_url:
        return Location(f"{base_url}/{blob_key(sha256)}")
    url = blobs.presigned_url(sha256, expires_s=expires_s)
    if url is None:
        return Location("")
    return Location(url, int(time.time() if now is None else now) + expires_s)
