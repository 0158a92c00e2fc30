"""Signing through the store: replicas never publish two contents under one version,
and each replica's metadata cache hears of the other's writes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

from fleetcast.server.metadata_cache import MetadataCache
from fleetcast.server.signing import SIGNING_LOCK, DirectorAssignment, Signer
from fleetcast.server.store import Store
from tests.integration.store.conftest import OpenStore
from tests.support.waiting import wait_for

SHA = "ab" * 32


def _replica(store: Store, keys: Path) -> tuple[Signer, MetadataCache]:
    cache = MetadataCache(store, changes=store)
    return Signer.open(keys, cache, lock=lambda: cache.publishing(store.exclusive(SIGNING_LOCK))), cache


def _assignment(deployment_id: str) -> DirectorAssignment:
    return DirectorAssignment(deployment_id=deployment_id, model="m", version="1", variant="original",
                              format="onnx", sha256=SHA, length=10)


def _deployment_of(signer: Signer, device_id: str) -> str:
    """The deployment the device's entry in its director bin names, read through `signer`'s store."""
    entry = signer.director_entry(device_id)
    assert entry is not None, f"no director entry for {device_id}"
    return entry.unrecognized_fields["custom"]["fleetcast"]["deployment_id"]


def test_two_stores_signing_one_device_take_every_version_once(open_store: OpenStore, tmp_path: Path) -> None:
    stores = [open_store(), open_store()]
    signers = [_replica(store, tmp_path / "keys")[0] for store in stores]
    first = signers[0].assign("dev-1", _assignment("dep-0"))
    start = threading.Barrier(8)

    def assign(i: int) -> list[int]:
        start.wait()
        return [signers[i % 2].assign("dev-1", _assignment(f"dep-{i}-{n}")) for n in range(5)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = sorted(v for got in pool.map(assign, range(8)) for v in got)
    # 40 publishes of the device's bin, 40 distinct versions after the first
    assert versions == list(range(first + 1, first + 41))
    last = {}
    for store in stores:   # what each database connection holds (SQLite's caches hear of no other store)
        signer = Signer.open(tmp_path / "keys", store)
        assert signer.director_version("dev-1") == first + 40
        last[id(store)] = _deployment_of(signer, "dev-1")
    assert len(set(last.values())) == 1 and next(iter(last.values())).startswith("dep-")


def _settled(writer: Store, reader: Store) -> None:
    """Until `reader` has had every notice `writer` sent so far (they arrive in commit order)."""
    seen: list[str] = []
    reader.subscribe(lambda topic, detail: seen.append(detail) if topic == "mark" else None)
    writer.announce("mark", "settled")
    wait_for(lambda: seen or None, timeout_s=10, what="the reader to hear the writer's mark")


def test_a_replica_cache_serves_timestamps_from_memory_until_another_replica_writes(
        open_replica_store: OpenStore, tmp_path: Path) -> None:
    writer, reader = open_replica_store(), open_replica_store()
    (first, _), (second, cache) = _replica(writer, tmp_path / "keys"), _replica(reader, tmp_path / "keys")
    first.assign("dev-1", _assignment("dep-1"))
    _settled(writer, reader)
    assert _deployment_of(second, "dev-1") == "dep-1"
    hits = cache.hits
    for _ in range(5):
        second.metadata("director", "timestamp.json")
    assert cache.hits == hits + 5                                # from memory, not the database
    first.assign("dev-1", _assignment("dep-2"))
    wait_for(lambda: _deployment_of(second, "dev-1") == "dep-2" or None,
             timeout_s=10, what="the second replica to see dep-2")
    assert second.metadata("director", "timestamp.json") == first.metadata("director", "timestamp.json")


def test_a_cache_whose_notices_were_cut_drops_what_it_may_have_missed(
        open_replica_store: OpenStore, tmp_path: Path) -> None:
    writer, reader = open_replica_store(), open_replica_store()
    (first, _), (second, _) = _replica(writer, tmp_path / "keys"), _replica(reader, tmp_path / "keys")
    first.assign("dev-1", _assignment("dep-1"))
    _settled(writer, reader)       # the reader's cache heard of that write before its notices are cut
    assert _deployment_of(second, "dev-1") == "dep-1"
    with psycopg.connect(reader._url, autocommit=True) as admin:   # cut the reader's LISTEN connection
        killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                               (f"fleetcast-listen-{reader.origin}",)).fetchall()
    assert killed == [(True,)]
    first.assign("dev-1", _assignment("dep-2"))                  # while nobody listens for the reader
    wait_for(lambda: _deployment_of(second, "dev-1") == "dep-2" or None,
             timeout_s=10, what="the reader to drop its copy after reconnecting")


def test_many_announcements_in_one_call_reach_another_store_in_order(open_replica_store: OpenStore) -> None:
    writer, reader = open_replica_store(), open_replica_store()
    heard: list[str] = []
    reader.subscribe(lambda topic, detail: heard.append(detail) if topic == "many" else None)
    details = [f"dev-{i:05d}\nnotice {i}" for i in range(12_345)]     # more than one statement's worth
    writer.announce("many", *details)
    writer.announce("many", "last")
    wait_for(lambda: len(heard) == len(details) + 1 or None, timeout_s=30, what="every announcement to arrive")
    assert heard == [*details, "last"]
