"""Fixtures for the end-to-end scenarios: real server and agent subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.processes import AgentProcess, ServerProcess, _Process


class Started:
    """Every process a test started; all are stopped at teardown, whatever happened."""

    def __init__(self) -> None:
        self.processes: list[_Process] = []

    def add(self, process: _Process) -> _Process:
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for p in reversed(self.processes):
            try:
                p.stop()
            except AssertionError:
                p.kill()


@pytest.fixture
def started() -> Iterator[Started]:
    s = Started()
    yield s
    s.stop_all()


@pytest.fixture
def new_agent(started: Started, tmp_path: Path) -> Callable[..., AgentProcess]:
    """Starts an agent of `server`; stopped at teardown."""

    def make(server: ServerProcess, device_id: str, hardware: str = "x86-cpu", **kwargs: object) -> AgentProcess:
        agent = AgentProcess(
            tmp_path / device_id, server=server, device_id=device_id, hardware=hardware,
            trust_root=server.trust_root, enroll_token=server.enroll_token, **kwargs,  # type: ignore[arg-type]
        )
        started.add(agent)
        return agent.start()

    return make


@pytest.fixture
def new_server(started: Started, tmp_path: Path) -> Callable[..., ServerProcess]:
    """Starts a server of the test's own; stopped at teardown."""

    def make(name: str = "server", **kwargs: object) -> ServerProcess:
        server = ServerProcess(tmp_path / name, **kwargs)  # type: ignore[arg-type]
        started.add(server)
        return server.start()

    return make


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the scenarios of a module that do not restart or alter it."""
    server = ServerProcess(tmp_path_factory.mktemp("shared") / "server")
    server.start()
    try:
        yield server
    finally:
        server.stop()
