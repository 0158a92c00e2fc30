"""Version names are allocated in the store, atomically across connections; failures leave nothing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from tests.integration.store.conftest import OpenStore


def test_concurrent_reservations_from_two_connections_get_distinct_numbers(open_store: OpenStore) -> None:
    # Two stores on one database: what keeps them apart is the database, not a lock in the process.
    stores = [open_store(), open_store()]
    start = threading.Barrier(40)

    def reserve(i: int) -> str | None:
        start.wait()
        return stores[i % 2].reserve_version("digits", None, at=0.0)

    with ThreadPoolExecutor(max_workers=40) as pool:
        got = list(pool.map(reserve, range(40)))
    assert sorted(int(v) for v in got if v is not None) == list(range(1, 41))


def test_a_named_version_is_reserved_once_and_a_released_one_is_free_again(store) -> None:
    assert store.reserve_version("digits", "7", at=0.0) == "7"
    assert store.reserve_version("digits", "7", at=0.0) is None
    assert store.reserve_version("digits", None, at=0.0) == "8"   # after every name taken, reserved included
    store.release_version("digits", "7")
    assert store.reserve_version("digits", "7", at=0.0) == "7"
    assert store.reserve_version("other", None, at=0.0) == "1"
    assert store.reserve_version("other", "release-x", at=0.0) == "release-x"
    assert store.reserve_version("other", None, at=0.0) == "2"     # names that are not numbers do not count


def test_reservations_a_crash_left_are_dropped_when_the_store_opens(open_store: OpenStore) -> None:
    store = open_store()
    assert store.reserve_version("digits", None, at=0.0) == "1"
    store.close()
    reopened = open_store()
    assert reopened.reserve_version("digits", None, at=0.0) == "1"
