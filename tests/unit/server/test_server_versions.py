"""Version names are allocated in the store, atomically across connections; failures leave nothing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fleetcast.server.store.sqlite import SqliteStore


def test_concurrent_reservations_from_two_connections_get_distinct_numbers(tmp_path: Path) -> None:
    # Two stores on one file: what keeps them apart is the database's transaction, not a lock in the process.
    stores = [SqliteStore(tmp_path / "fleet.db"), SqliteStore(tmp_path / "fleet.db")]
    start = threading.Barrier(50)

    def reserve(i: int) -> str | None:
        start.wait()
        return stores[i % 2].reserve_version("digits", None, at=0.0)

    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            got = list(pool.map(reserve, range(50)))
    finally:
        for s in stores:
            s.close()
    assert sorted(int(v) for v in got if v is not None) == list(range(1, 51))


def test_a_named_version_is_reserved_once_and_a_released_one_is_free_again(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "fleet.db")
    try:
        assert store.reserve_version("digits", "7", at=0.0) == "7"
        assert store.reserve_version("digits", "7", at=0.0) is None
        assert store.reserve_version("digits", None, at=0.0) == "8"   # after every name taken, reserved included
        store.release_version("digits", "7")
        assert store.reserve_version("digits", "7", at=0.0) == "7"
        assert store.reserve_version("other", None, at=0.0) == "1"
    finally:
        store.close()


def test_reservations_a_crash_left_are_dropped_when_the_store_opens(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "fleet.db")
    assert store.reserve_version("digits", None, at=0.0) == "1"
    store.close()
    reopened = SqliteStore(tmp_path / "fleet.db")
    try:
        assert reopened.reserve_version("digits", None, at=0.0) == "1"
    finally:
        reopened.close()
