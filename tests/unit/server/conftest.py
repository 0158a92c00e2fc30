"""Fixtures for the server's unit tests: a real Services on a temp data dir (no sockets)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcast.server.config import ServerConfig
from fleetcast.server.services import Services, open_services
from tests.support import models


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    s = open_services(ServerConfig(data_dir=tmp_path / "data", max_upload_bytes=1024 * 1024))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def model_bytes() -> bytes:
    return models.to_bytes(models.tiny_classifier(seed=1))
