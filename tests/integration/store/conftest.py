"""The store contract suite: every test runs on SQLite and on PostgreSQL.

`open_store()` opens another store instance on this test's database (another
connection, as another replica would), closed when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from fleetcast.server.store import Store
from fleetcast.server.store.open import open_store as open_url
from tests.support import postgres

OpenStore = Callable[[], Store]


def _opener(url: str, stack: ExitStack) -> OpenStore:
    def opened() -> Store:
        store = open_url(url)
        stack.callback(store.close)
        return store
    return opened


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    with ExitStack() as stack:
        if request.param == "sqlite":
            yield _opener(f"sqlite://{tmp_path / 'fleetcast.db'}", stack)
        else:
            url = stack.enter_context(postgres.database())
            yield _opener(url, stack)


@pytest.fixture
def store(open_store: OpenStore) -> Store:
    return open_store()


@pytest.fixture
def open_replica_store(tmp_path: Path) -> Iterator[OpenStore]:
    """Stores shared by replicas (PostgreSQL): what only a shared database can show."""
    with ExitStack() as stack:
        url = stack.enter_context(postgres.database())
        yield _opener(url, stack)
