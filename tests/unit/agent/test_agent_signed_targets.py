"""The start-up check of an installed slot against the image metadata the agent last
verified, offline: genuine artifacts pass (expired or not, after a root rotation), and
anything the image repository did not sign, or signed differently, is refused."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import pytest

from fleetcast.agent.errors import VerificationError
from fleetcast.agent.signed_targets import SignedTargets
from fleetcast.agent.trust import VerifiedAssignment
from fleetcast.server.signing import ArtifactTarget, MetadataNotFound, SigningConfig
from tests.unit.test_trust import DEVICE, Clock, Fleet, assignment, make_fleet

SHA = "c" * 64
CUSTOM = {"kind": "model", "model": "digits", "version": "3", "variant": "int8", "format": "onnx"}


def verified_fleet(tmp_path: Path, clock: Clock | None = None, config: SigningConfig = SigningConfig()) -> tuple[Fleet, VerifiedAssignment]:
    fleet = make_fleet(tmp_path, config, clock=clock)
    fleet.signer.add_artifact(ArtifactTarget(SHA, 100, CUSTOM))
    fleet.signer.assign(DEVICE, dataclasses.replace(assignment(sha256=SHA), golden=None))
    verified = fleet.verifier().check()
    assert verified is not None
    return fleet, verified


def saved(a: VerifiedAssignment, **changes: object) -> VerifiedAssignment:
    return VerifiedAssignment.from_saved({**a.to_json(), **changes})


def load(fleet: Fleet) -> SignedTargets:
    return SignedTargets.load(fleet.trust_root, fleet.state_dir / "image")


def test_an_artifact_the_image_repository_signed_passes(tmp_path: Path) -> None:
    fleet, verified = verified_fleet(tmp_path)
    load(fleet).require(verified)


def test_an_artifact_the_image_repository_never_signed_is_refused(tmp_path: Path) -> None:
    fleet, verified = verified_fleet(tmp_path)
    forged = "d" * 64
    with pytest.raises(VerificationError, match="not a target of the image repository"):
        load(fleet).require(saved(verified, sha256=forged, target_path=f"artifacts/{forged}"))


def test_a_genuine_artifact_claimed_as_another_version_is_refused(tmp_path: Path) -> None:
    fleet, verified = verified_fleet(tmp_path)
    with pytest.raises(VerificationError, match="version"):
        load(fleet).require(saved(verified, version="9"))


def test_a_genuine_artifact_with_another_length_is_refused(tmp_path: Path) -> None:
    fleet, verified = verified_fleet(tmp_path)
    with pytest.raises(VerificationError, match="length/sha256"):
        load(fleet).require(saved(verified, length=101))


def test_targets_metadata_rewritten_on_disk_is_refused(tmp_path: Path) -> None:
    fleet, verified = verified_fleet(tmp_path)
    path = fleet.state_dir / "image" / "targets.json"
    envelope = json.loads(path.read_bytes())
    envelope["signatures"] = []
    path.write_text(json.dumps(envelope))
    with pytest.raises(VerificationError, match="signature"):
        load(fleet)


def test_missing_targets_metadata_is_refused(tmp_path: Path) -> None:
    fleet, _ = verified_fleet(tmp_path)
    (fleet.state_dir / "image" / "targets.json").unlink()
    with pytest.raises(VerificationError, match="never verified"):
        load(fleet)


def test_expired_metadata_still_vouches_for_what_was_installed(tmp_path: Path) -> None:
    long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=400)
    fleet = make_fleet(tmp_path, clock=Clock(long_ago))
    fleet.signer.add_artifact(ArtifactTarget(SHA, 100, CUSTOM))
    image = fleet.state_dir / "image"
    image.mkdir(parents=True)
    versions = [n for n in range(1, 20) if _has(fleet, f"{n}.targets.json")]
    (image / "targets.json").write_bytes(fleet.signer.metadata("image", f"{versions[-1]}.targets.json"))
    with pytest.raises(VerificationError, match="expired"):
        fleet.verifier().check()     # online, the expired metadata is refused ...
    a = saved(_as_verified(), sha256=SHA, target_path=f"artifacts/{SHA}", length=100)
    load(fleet).require(a)           # ... offline, it still says what is genuine


def _has(fleet: Fleet, name: str) -> bool:
    try:
        fleet.signer.metadata("image", name)
    except MetadataNotFound:
        return False
    return True


def _as_verified() -> VerifiedAssignment:
    doc = {"deployment_id": "dep-1", "device_id": DEVICE, "model": "digits", "version": "3", "variant": "int8",
           "format": "onnx", "target_path": f"artifacts/{SHA}", "sha256": SHA, "length": 100, "golden": None,
           "inputs": {"input": {"dtype": "float32", "shape": ["batch", 64]}}, "director_version": 1}
    return VerifiedAssignment.from_saved(doc)


def test_a_rotated_root_is_followed_and_a_forged_one_is_refused(tmp_path: Path) -> None:
    clock = Clock(datetime.datetime.now(datetime.timezone.utc))
    fleet, _ = verified_fleet(tmp_path, clock)
    clock.now += datetime.timedelta(days=200)
    fleet.signer.refresh_timestamps()
    verified = fleet.verifier().check()
    assert verified is not None and (fleet.state_dir / "image" / "root_history" / "2.root.json").exists()
    load(fleet).require(verified)

    (fleet.state_dir / "image" / "root_history" / "3.root.json").write_bytes(
        fleet.signer.metadata("image", "2.root.json"))
    with pytest.raises(VerificationError, match="3.root.json"):
        load(fleet)
