"""The server's two TUF repositories: keys, layout, publishing order, expiry refresh."""

from __future__ import annotations

import base64
import datetime
import json
import stat
from pathlib import Path

import pytest
from tuf.api.dsse import SimpleEnvelope
from tuf.api.metadata import Root, Targets, Timestamp

from fleetcast.server.signing import (
    ArtifactTarget,
    DirectorAssignment,
    InvalidAssignmentError,
    MetadataNotFound,
    Signer,
    SigningConfig,
    SigningError,
    device_bin,
)
from tests.support.metadata_store import MemoryMetadataStore

SHA_A = "a" * 64
SHA_B = "b" * 64


class Clock:
    """A settable UTC clock for the signer."""

    def __init__(self) -> None:
        self.now = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


class RecordingStore(MemoryMetadataStore):
    """The memory store, also remembering the order of writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, str]] = []

    def put_metadata(self, repository: str, name: str, data: bytes) -> None:
        self.writes.append((repository, name))
        super().put_metadata(repository, name, data)


def assignment(sha256: str = SHA_A, length: int = 10) -> DirectorAssignment:
    return DirectorAssignment(
        deployment_id="dep-1", model="digits", version="1", variant="original",
        format="onnx", sha256=sha256, length=length,
    )


def signed(data: bytes) -> object:
    return SimpleEnvelope.from_bytes(data).get_signed()


def test_keys_are_private_files_and_survive_reopening(tmp_path: Path) -> None:
    store = MemoryMetadataStore()
    first = Signer.open(tmp_path / "keys", store, SigningConfig())
    second = Signer.open(tmp_path / "keys", store, SigningConfig())

    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    keys = sorted(p.name for p in (tmp_path / "keys").iterdir())
    assert keys == ["director-online.pem", "director-root.pem", "image-online.pem", "image-root.pem"]
    assert all(stat.S_IMODE((tmp_path / "keys" / k).stat().st_mode) == 0o600 for k in keys)
    assert first.trust_root() == second.trust_root()


def test_trust_root_holds_the_exact_stored_root_envelopes(tmp_path: Path) -> None:
    signer = Signer.open(tmp_path / "keys", MemoryMetadataStore(), SigningConfig())
    doc = json.loads(signer.trust_root())

    assert doc["fleetcast_trust_root"] == 1
    assert base64.b64decode(doc["image_root"]) == signer.metadata("image", "1.root.json")
    assert base64.b64decode(doc["director_root"]) == signer.metadata("director", "1.root.json")
    root = signed(base64.b64decode(doc["director_root"]))
    assert isinstance(root, Root) and root.consistent_snapshot


def test_the_director_delegates_device_entries_to_hash_bins_with_its_online_key(tmp_path: Path) -> None:
    signer = Signer.open(tmp_path / "keys", MemoryMetadataStore(), SigningConfig())

    top = signed(signer.metadata("director", "1.targets.json"))
    assert isinstance(top, Targets) and top.targets == {}
    succinct = top.delegations.succinct_roles
    assert succinct is not None and succinct.number_of_bins == 256 and succinct.keyids == list(top.delegations.keys)
    assert succinct.get_role_for_target("devices/dev-1") == device_bin("dev-1")
    snapshot = signed(signer.metadata("director", "1.snapshot.json"))
    assert sorted(snapshot.meta) == sorted(["targets.json", *(f"{r}.json" for r in succinct.get_roles())])
    assert signer.metadata("director", "1.root.json") != signer.metadata("image", "1.root.json")


def test_missing_keys_with_existing_metadata_is_refused(tmp_path: Path) -> None:
    store = MemoryMetadataStore()
    Signer.open(tmp_path / "keys", store, SigningConfig())
    (tmp_path / "keys" / "image-root.pem").unlink()

    with pytest.raises(SigningError, match="restore the keys dir"):
        Signer.open(tmp_path / "keys", store, SigningConfig())


def test_keys_from_another_server_are_refused(tmp_path: Path) -> None:
    store = MemoryMetadataStore()
    Signer.open(tmp_path / "keys", store, SigningConfig())

    Signer.open(tmp_path / "other-keys", MemoryMetadataStore(), SigningConfig())
    for name in ("image-root.pem", "image-online.pem", "director-root.pem", "director-online.pem"):
        (tmp_path / "keys" / name).write_bytes((tmp_path / "other-keys" / name).read_bytes())

    with pytest.raises(SigningError, match="does not match"):
        Signer.open(tmp_path / "keys", store, SigningConfig())


@pytest.mark.parametrize(
    ("repository", "name"),
    [
        ("image", "../keys/image-root.pem"),
        ("image", "root"),
        ("image", "mirrors.json"),
        ("image", "1.timestamp.json"),
        ("image", "99.targets.json"),
        ("director", "bin-00.json"),
        ("director", "1.bin-0g.json"),
        ("director/dev-1", "timestamp.json"),
        ("director/../image", "timestamp.json"),
        ("director/a/b", "timestamp.json"),
        ("images", "timestamp.json"),
    ],
)
def test_metadata_refuses_unknown_names(tmp_path: Path, repository: str, name: str) -> None:
    signer = Signer.open(tmp_path / "keys", MemoryMetadataStore(), SigningConfig())

    with pytest.raises(MetadataNotFound):
        signer.metadata(repository, name)


def test_each_publish_writes_versioned_files_before_the_timestamp(tmp_path: Path) -> None:
    store = RecordingStore()
    signer = Signer.open(tmp_path / "keys", store, SigningConfig())
    store.writes.clear()

    signer.add_artifact(ArtifactTarget(SHA_A, 10, {"kind": "model"}))
    signer.assign("dev-1", assignment())

    image = [name for repo, name in store.writes if repo == "image"]
    director = [name for repo, name in store.writes if repo == "director"]
    assert image == ["2.targets.json", "2.snapshot.json", "timestamp.json"]
    assert director == [f"2.{device_bin('dev-1')}.json", "2.snapshot.json", "timestamp.json"]


def test_add_artifact_keeps_an_identical_target_without_a_new_version(tmp_path: Path) -> None:
    signer = Signer.open(tmp_path / "keys", MemoryMetadataStore(), SigningConfig())
    signer.add_artifact(ArtifactTarget(SHA_A, 10, {"kind": "model", "model": "digits"}))
    signer.add_artifact(ArtifactTarget(SHA_A, 10, {"fleetcast": {"kind": "model", "model": "digits"}}))
    signer.add_artifact(ArtifactTarget(SHA_B, 3, {"kind": "golden"}))

    targets = signed(signer.metadata("image", "targets.json"))
    assert isinstance(targets, Targets) and targets.version == 3
    assert targets.targets[f"artifacts/{SHA_A}"].custom == {"fleetcast": {"kind": "model", "model": "digits"}}
    assert targets.targets[f"artifacts/{SHA_B}"].length == 3


def test_add_artifact_refuses_a_second_length_for_one_hash(tmp_path: Path) -> None:
    signer = Signer.open(tmp_path / "keys", MemoryMetadataStore(), SigningConfig())
    signer.add_artifact(ArtifactTarget(SHA_A, 10, {}))

    with pytest.raises(InvalidAssignmentError, match="two lengths"):
        signer.add_artifact(ArtifactTarget(SHA_A, 11, {}))


def test_assign_returns_increasing_bin_versions_and_none_clears(tmp_path: Path) -> None:
    signer = Signer.open(tmp_path / "keys", MemoryMetadataStore(), SigningConfig())
    assert signer.director_version("dev-1") == 1 and signer.director_entry("dev-1") is None
    role = device_bin("dev-1")

    assert signer.assign("dev-1", assignment()) == 2
    assert signer.assign("dev-1", None) == 3
    assert signer.director_version("dev-1") == 3
    cleared = signed(signer.metadata("director", f"3.{role}.json"))
    assert isinstance(cleared, Targets) and cleared.targets == {}
    first = signed(signer.metadata("director", f"2.{role}.json"))
    assert isinstance(first, Targets) and list(first.targets) == ["devices/dev-1"]
    assert first.targets["devices/dev-1"].custom["fleetcast"]["device_id"] == "dev-1"
    assert first.targets["devices/dev-1"].hashes == {"sha256": SHA_A}


def test_assign_many_signs_each_touched_bin_once_in_one_publish(tmp_path: Path) -> None:
    store = RecordingStore()
    signer = Signer.open(tmp_path / "keys", store, SigningConfig())
    devices = [f"dev-{i}" for i in range(1000)]
    store.writes.clear()

    versions = signer.assign_many({d: assignment() for d in devices})

    bins = {device_bin(d) for d in devices}
    names = [name for _, name in store.writes]
    assert sorted(names[:-2]) == sorted(f"2.{b}.json" for b in bins)   # one new version per bin
    assert names[-2:] == ["2.snapshot.json", "timestamp.json"]
    assert set(versions.values()) == {2}
    assert all(signer.director_entry(d).custom["fleetcast"]["device_id"] == d for d in devices[::97])


def test_assign_refuses_bad_device_ids_and_hashes(tmp_path: Path) -> None:
    signer = Signer.open(tmp_path / "keys", MemoryMetadataStore(), SigningConfig())

    with pytest.raises(InvalidAssignmentError, match="device id"):
        signer.assign("../etc", assignment())
    with pytest.raises(InvalidAssignmentError, match="sha256"):
        signer.assign("dev-1", assignment(sha256="ABC"))


def test_an_unassigned_device_reads_a_signed_director_without_its_entry(tmp_path: Path) -> None:
    signer = Signer.open(tmp_path / "keys", MemoryMetadataStore(), SigningConfig())

    timestamp = signed(signer.metadata("director", "timestamp.json"))

    assert isinstance(timestamp, Timestamp) and timestamp.version == 1
    assert signer.director_entry("dev-9") is None


def test_refresh_re_signs_only_timestamps_within_half_their_lifetime(tmp_path: Path) -> None:
    clock = Clock()
    config = SigningConfig(timestamp_expiry_s=100.0, snapshot_expiry_s=1000.0, targets_expiry_s=10000.0)
    signer = Signer.open(tmp_path / "keys", MemoryMetadataStore(), config, clock=clock)
    signer.assign("dev-1", assignment())
    assert signer.refresh_timestamps() == 0

    clock.advance(60)
    assert signer.refresh_timestamps() == 2
    timestamp = signed(signer.metadata("director", "timestamp.json"))
    assert isinstance(timestamp, Timestamp) and timestamp.version == 3
    assert timestamp.snapshot_meta.version == 2
    assert signer.refresh_timestamps() == 0

    clock.advance(6000)
    assert signer.refresh_timestamps() == 2
    assert signer.director_version("dev-1") == 3     # every bin re-signed before its expiry
    assert signer.director_entry("dev-1") is not None
