"""Fixtures of the SDK and CLI unit tests: a fake server and a client wired to it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from tests.unit.sdk.sdk_fake_server import SERVER, TOKEN, FakeServer

from fleetcast.sdk import Client


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def client(fake: FakeServer) -> Client:
    return Client(SERVER, TOKEN, transport=httpx.MockTransport(fake))


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "digits.onnx"
    path.write_bytes(bytes(range(256)) * 1000)  # 256 kB: several upload chunks
    return path
