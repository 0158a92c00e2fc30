"""How the Verifier's ngclient Updaters reach the server's signed metadata.

`GrpcMetadataFetcher` implements python-tuf's `FetcherInterface` over the
`FetchMetadata` call of the v1 wire contract. ngclient asks for URLs such as
`fleetcast-director:///timestamp.json`; the scheme names the repository and the
path the file. A NOT_FOUND answer becomes `DownloadHTTPError(..., 404)`, which
ngclient needs to end its walk over newer root versions; every other failure is a
`tuf.api.exceptions.DownloadError` (the Verifier maps it to ServerUnavailableError).

`BundleFetcher` adds `FetchMetadataBundle`: at the start of a check the Verifier
hands it the versions it trusts and it asks once for every newer file of both
repositories; ngclient's requests are then served from that reply (a root past the
server's newest is a 404 without a call) and anything the reply left out goes to
`FetchMetadata`. Nothing in a bundle is trusted: ngclient verifies those bytes exactly
as it verifies a `FetchMetadata` reply. A server without the call (UNIMPLEMENTED)
turns the bundle off for this agent run; a failed or malformed bundle only costs
the calls it would have saved.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Final
from urllib.parse import unquote, urlsplit

import grpc
from tuf.api.exceptions import DownloadError, DownloadHTTPError, DownloadLengthMismatchError
from tuf.ngclient import FetcherInterface

from fleetcast.agent.credentials import credential_refused
from fleetcast.proto.assignment import METADATA_NAME
from fleetcast.proto.metadata_bundle import Absent, BundleError, BundleFiles
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


class BundleFetcher(GrpcMetadataFetcher):
    """`GrpcMetadataFetcher` that serves one check from a `FetchMetadataBundle` reply."""

    def __init__(self, stub: device_pb2_grpc.DeviceServiceStub, token: str, timeout_s: float = 10.0,
                 device_id: str = "") -> None:
        super().__init__(stub, token, timeout_s=timeout_s, device_id=device_id)
        self._bundle = BundleFiles()
        self._enabled = True
        self.bundles = 0        # replies taken, for tests and logs

    def prefetch(self, trusted: Mapping[str, Mapping[str, int]]) -> None:
        """Asks for the files newer than `trusted` (scheme -> role -> version) for the next check."""
        self._bundle = BundleFiles()
        if not self._enabled:
            return
        request = device_pb2.BundleRequest(trusted=[
            device_pb2.TrustedVersions(repository=REPOSITORIES[scheme], **versions)
            for scheme, versions in trusted.items()])
        try:
            reply = self._stub.FetchMetadataBundle(request, metadata=self._metadata, timeout=self._timeout_s)
            self._bundle = BundleFiles.from_message(reply, max_bytes=MAX_METADATA_BYTES)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                logger.info("the server has no metadata bundle: fetching metadata one file at a time")
                self._enabled = False
                return
            credential_refused(e, self._device_id)
            logger.warning("metadata bundle failed (%s): fetching metadata one file at a time", code)
            return
        except BundleError as e:
            logger.warning("metadata bundle refused (%s): fetching metadata one file at a time", e)
            return
        self.bundles += 1
        logger.debug("metadata bundle files=%d", len(self._bundle.files))

    def forget(self) -> None:
        """Ends the check: later requests (timestamp.json above all) go to the server again."""
        self._bundle = BundleFiles()

    def _fetch(self, url: str) -> Iterator[bytes]:
        scheme, name = split_metadata_url(url)
        found = self._bundle.lookup(REPOSITORIES[scheme], name)
        if found is Absent.NO_SUCH_ROOT:
            raise DownloadHTTPError(f"{scheme} has no {name}", 404)
        if found is Absent.UNKNOWN:
            return super()._fetch(url)
        return iter((found,))
