"""The store contract suite: every test runs on SQLite and on PostgreSQL.

`open_store()` opens another store instance on this test's database (another
connection, as another replica would), closed when the test ends.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest

from fleetcast.server.store import Store
from fleetcast.server.store.open import open_store as open_url
from fleetcast.server.store.open import sqlite_path
from tests.support import postgres

OpenStore = Callable[[], Store]


def _opener(url: str, stack: ExitStack) -> OpenStore:
    def opened() -> Store:
        store = open_url(url)
        stack.callback(store.close)
        return store
    return opened


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """This test's database, as `--store` would name it."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'fleetcast.db'}"
    else:
        with postgres.database() as url:
            yield url


@pytest.fixture
def open_store(store_url: str) -> Iterator[OpenStore]:
    with ExitStack() as stack:
        yield _opener(store_url, stack)


def run_sql(url: str, *statements: str) -> None:
    """Runs statements on the database behind `url` outside any store (an older schema, say)."""
    if url.startswith("sqlite:"):
        with sqlite3.connect(sqlite_path(url)) as c:
            for sql in statements:
                c.execute(sql)
        return
    with psycopg.connect(url, autocommit=True) as c:
        for sql in statements:
            c.execute(sql)


@pytest.fixture
def store(open_store: OpenStore) -> Store:
    return open_store()


@pytest.fixture
def open_replica_store(tmp_path: Path) -> Iterator[OpenStore]:
    """Stores shared by replicas (PostgreSQL): what only a shared database can show."""
    with ExitStack() as stack:
        url = stack.enter_context(postgres.database())
        yield _opener(url, stack)
