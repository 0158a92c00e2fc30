"""make_bundle: what a device is sent for its trusted versions, and the size bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetcast.server.errors import InvalidRequest
from fleetcast.server.metadata_bundle import Trusted, make_bundle
from fleetcast.server.signing import ArtifactTarget, DirectorAssignment, Signer, device_bin
from tests.support.metadata_store import MemoryMetadataStore

DEVICE = "dev-1"


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    signer = Signer.open(tmp_path / "keys", MemoryMetadataStore())
    signer.add_artifact(ArtifactTarget("a" * 64, 100, {"kind": "model", "model": "digits"}))
    signer.assign(DEVICE, DirectorAssignment(deployment_id="dep-1", model="digits", version="1", variant="v",
                                             format="onnx", sha256="a" * 64, length=100))
    return signer


def test_a_new_device_gets_every_file_in_verification_order(signer: Signer) -> None:
    bundle = make_bundle(signer, device_id=DEVICE, trusted={})
    director = [f.name.split(".", 1)[-1] if f.name[0].isdigit() else f.name
                for f in bundle.files if f.repository == "director"]

    assert director == ["timestamp.json", "snapshot.json", "targets.json", f"{device_bin(DEVICE)}.json"]
    assert [f.name for f in bundle.files if f.repository == "image"][0] == "timestamp.json"
    assert bundle.roots == {"image": 1, "director": 1}
    for f in bundle.files:
        assert f.data == signer.metadata(f.repository, f.name)


def test_what_does_not_fit_the_bound_is_left_out_never_cut(signer: Signer) -> None:
    whole = make_bundle(signer, device_id=DEVICE, trusted={})
    image_bytes = sum(len(f.data) for f in whole.files if f.repository == "image")
    stamp = next(f for f in whole.files if f.repository == "director" and f.name == "timestamp.json")
    bound = image_bytes + len(stamp.data)

    cut = make_bundle(signer, device_id=DEVICE, trusted={}, max_bytes=bound)

    assert sum(len(f.data) for f in cut.files) <= bound
    assert [f.name for f in cut.files if f.repository == "director"] == ["timestamp.json"]
    assert all(f.data == signer.metadata(f.repository, f.name) for f in cut.files)


def test_trusted_versions_out_of_range_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="out of range"):
        Trusted(bin=2**60)
