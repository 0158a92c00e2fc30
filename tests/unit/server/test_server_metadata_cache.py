"""The hot-metadata cache: versioned names from memory, mutable ones from the store."""

from __future__ import annotations

from pathlib import Path


from fleetcast.server.metadata_cache import MetadataCache
from fleetcast.server.signing import DirectorAssignment, Signer
from tests.support.metadata_store import MemoryMetadataStore

SHA = "ab" * 32


class CountingStore(MemoryMetadataStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get_metadata(self, repository: str, name: str) -> bytes | None:
        self.reads.append(name)
        return super().get_metadata(repository, name)


def _assignment(deployment_id: str) -> DirectorAssignment:
    return DirectorAssignment(deployment_id=deployment_id, model="m", version="1", variant="original",
                              format="onnx", sha256=SHA, length=10)


def _entry_deployment(signer: Signer, device_id: str) -> str:
    return signer.director_entry(device_id).unrecognized_fields["custom"]["fleetcast"]["deployment_id"]


def test_versioned_metadata_is_served_from_memory_and_timestamps_from_the_store(tmp_path: Path) -> None:
    store = CountingStore()
    signer = Signer.open(tmp_path / "keys", MetadataCache(store))
    signer.assign("dev-1", _assignment("dep-1"))
    store.reads.clear()
    for _ in range(3):
        signer.metadata("director", "2.snapshot.json")
        signer.metadata("director", "timestamp.json")
    assert store.reads.count("2.snapshot.json") == 0          # written through, never read back
    assert store.reads.count("timestamp.json") == 3


def test_a_replica_sees_a_publish_made_by_another_at_once(tmp_path: Path) -> None:
    shared = MemoryMetadataStore()
    first = Signer.open(tmp_path / "keys", MetadataCache(shared))
    second = Signer.open(tmp_path / "keys", MetadataCache(shared))
    first.assign("dev-1", _assignment("dep-1"))
    assert _entry_deployment(second, "dev-1") == "dep-1"
    first.assign("dev-1", _assignment("dep-2"))
    assert second.metadata("director", "timestamp.json") == first.metadata("director", "timestamp.json")
    assert _entry_deployment(second, "dev-1") == "dep-2"


def test_the_cache_stays_within_its_byte_bound_and_drops_the_oldest(tmp_path: Path) -> None:
    store = CountingStore()
    cache = MetadataCache(store, max_bytes=1000)
    for i in range(1, 11):
        cache.put_metadata("r", f"{i}.targets.json", bytes(300))
    assert cache.size_bytes <= 1000
    store.reads.clear()
    assert cache.get_metadata("r", "10.targets.json") == bytes(300) and store.reads == []
    assert cache.get_metadata("r", "1.targets.json") == bytes(300) and store.reads == ["1.targets.json"]
