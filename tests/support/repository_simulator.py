"""A repository simulator: ngclient's fetcher interface served from a real Signer.

Like python-tuf's RepositorySimulator, it implements the real `FetcherInterface`
(the one `fleetcast.agent.trust.Verifier` takes), so tests exercise the agent's
checks against metadata the server's `Signer` signed, with no sockets. Tests can
replace any file it serves (`serve`) to play an attacker or a stale mirror.
"""

from __future__ import annotations

from collections.abc import Iterator

from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient import FetcherInterface

from fleetcast.agent.fetchers import split_metadata_url
from fleetcast.server.signing import MetadataNotFound, Signer


class RepositorySimulator(FetcherInterface):
    """Serves one device's view of the repositories, as the gRPC service would."""

    def __init__(self, signer: Signer, device_id: str) -> None:
        self.signer = signer
        self.device_id = device_id
        self.overrides: dict[tuple[str, str], bytes] = {}
        self.fetched: list[tuple[str, str]] = []
        self.offline = False

    def repository(self, scheme: str) -> str:
        return "image" if scheme == "fleetcast-image" else "director"

    def serve(self, repository: str, name: str, data: bytes) -> None:
        """Serves `data` for (repository, name) instead of what the signer holds."""
        self.overrides[(repository, name)] = data

    def _fetch(self, url: str) -> Iterator[bytes]:
        if self.offline:
            raise DownloadError("the simulated server is offline")
        scheme, name = split_metadata_url(url)
        repository = self.repository(scheme)
        self.fetched.append((repository, name))
        if (repository, name) in self.overrides:
            return iter((self.overrides[(repository, name)],))
        try:
            return iter((self.signer.metadata(repository, name),))
        except MetadataNotFound as e:
            raise DownloadHTTPError(str(e), 404) from e
