"""open_store: which URLs open which store, and the ones refused with what to do instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetcast.server.errors import InvalidRequest, StoreUnavailable
from fleetcast.server.store.open import open_store
from fleetcast.server.store.sqlite import SqliteStore


def test_a_sqlite_url_opens_that_file(tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path / 'f.db'}")
    try:
        assert isinstance(store, SqliteStore) and (tmp_path / "f.db").exists()
    finally:
        store.close()


@pytest.mark.parametrize("url, words", [
    ("sqlite://relative.db", "three slashes"),
    ("sqlite:///x.db?mode=ro", "three slashes"),
    ("mysql://db/fleet", "is not one Fleetcast opens"),
    ("postgresql://fleet:hunter2@127.0.0.1/fleet", "~/.pgpass"),
    ("postgresql://fleet@db.example.com/fleet", "sslmode=verify-full"),
    ("postgresql://fleet@db.example.com/fleet?sslmode=prefer", "sslmode=verify-full"),
])
def test_urls_that_cannot_be_used_are_refused_naming_the_fix(url: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words.replace("?", r"\?").replace(".", r"\.")):
        open_store(url)


def test_a_database_that_does_not_answer_is_a_one_line_store_error() -> None:
    with pytest.raises(StoreUnavailable, match="cannot open the PostgreSQL store.*check the --store URL"):
        open_store("postgresql://fleet@127.0.0.1:1/fleet?connect_timeout=2")
