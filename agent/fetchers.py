"""How the Verifier's ngclient Updaters reach the server's signed metadata.

`GrpcMetadataFetcher` implements python-tuf's `FetcherInterface` over the
`FetchMetadata` call of the v1 wire contract. ngclient asks for URLs such as
`fleetcast-director:///timestamp.json`; the scheme names the repository and the
path the file. A NOT_FOUND answer becomes `DownloadHTTPError(..., 404)`, which
ngclient needs to end its walk over newer root versions; every other failure is a
`tuf.api.exceptions.DownloadError` (the Verifier maps it to ServerUnavailableError).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Final
from urllib.parse import unquote, urlsplit

import grpc
from tuf.api.exceptions import DownloadError, DownloadHTTPError, DownloadLengthMismatchError
from tuf.ngclient import FetcherInterface

from fleetcast.agent.credentials import credential_refused
from fleetcast.proto.assignment import METADATA_NAME
from fleetcast.proto.v1 import device_pb2, device_pb2_grpc

logger = logging.getLogger(__name__)

MAX_METADATA_BYTES: Final = 16 * 1024**2
REPOSITORIES: Final = {
    "fleetcast-image": device_pb2.REPOSITORY_IMAGE,
    "fleetcast-director": device_pb2.REPOSITORY_DIRECTOR,
}


def split_metadata_url(url: str) -> tuple[str, str]:
    """('fleetcast-image' | 'fleetcast-director', file name) for a Verifier URL."""
    parts = urlsplit(url)
    name = unquote(parts.path.lstrip("/"))
    if parts.scheme not in REPOSITORIES or parts.netloc or not METADATA_NAME.fullmatch(name):
        raise DownloadError(f"{url[:120]!r} is not a Fleetcast metadata URL")
    return parts.scheme, name


class GrpcMetadataFetcher(FetcherInterface):
    """Fetches metadata with `DeviceService.FetchMetadata`, as this device's token."""

    def __init__(
        self, stub: device_pb2_grpc.DeviceServiceStub, token: str, timeout_s: float = 10.0, device_id: str = ""
    ) -> None:
        self._stub = stub
        self._device_id = device_id
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout_s = timeout_s

    def _fetch(self, url: str) -> Iterator[bytes]:
        scheme, name = split_metadata_url(url)
        request = device_pb2.MetadataRequest(repository=REPOSITORIES[scheme], name=name)
        try:
            response = self._stub.FetchMetadata(
                request, metadata=self._metadata, timeout=self._timeout_s
            )
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            if code == grpc.StatusCode.NOT_FOUND:
                raise DownloadHTTPError(f"{scheme} has no {name}", 404) from e
            credential_refused(e, self._device_id)
            raise DownloadError(f"fetching {scheme} {name} failed: {code}") from e
        if len(response.data) > MAX_METADATA_BYTES:
            raise DownloadLengthMismatchError(
                f"{scheme} {name} is {len(response.data)} bytes, more than {MAX_METADATA_BYTES}"
            )
        logger.debug("metadata fetched repository=%s name=%s bytes=%d", scheme, name, len(response.data))
        return iter((response.data,))
