"""A real `fleetcast server` on 127.0.0.1 (free ports) for the SDK and CLI, as a subprocess."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.processes import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A running server; its data dir holds server.json and operator-token."""
    with ServerProcess(tmp_path_factory.mktemp("sdk") / "server") as process:
        yield process
