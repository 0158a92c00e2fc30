"""A/B slots: install into the inactive slot, atomic flip, refusal of corrupted files."""

from __future__ import annotations

import pytest

from fleetcast.agent.datadir import DataDir
from fleetcast.agent.errors import ActivationError, VerificationError
from fleetcast.agent.slots import Slots, other
from tests.unit.agent.conftest import Artifact




def test_fresh_device_has_no_active_slot(data: DataDir) -> None:
    assert Slots(data).active() is None
    assert other(None) == "a"


def test_install_then_flip_makes_the_slot_active_and_loadable(data: DataDir, artifact_v1: Artifact) -> None:
    slots = Slots(data)
    installed = slots.install("a", artifact_v1.assignment, model_file=artifact_v1.model_path,
                              golden_file=artifact_v1.golden_path)
    slots.flip("a")
    assert slots.active() == "a"
    assert data.active_pointer.read_text() == "a"
    loaded = slots.load("a")
    assert loaded.assignment == artifact_v1.assignment == installed.assignment
    assert loaded.model_path.read_bytes() == artifact_v1.model_path.read_bytes()
    assert loaded.golden_path is not None and loaded.golden_path.name == "golden.npz"


def test_install_refuses_the_slot_being_served(data: DataDir, artifact_v1: Artifact) -> None:
    slots = Slots(data)
    slots.install("a", artifact_v1.assignment, model_file=artifact_v1.model_path,
                  golden_file=artifact_v1.golden_path)
    slots.flip("a")
    with pytest.raises(ActivationError):
        slots.install("a", artifact_v1.assignment, model_file=artifact_v1.model_path,
                      golden_file=artifact_v1.golden_path)


def test_load_refuses_a_model_file_corrupted_on_disk(data: DataDir, artifact_v1: Artifact) -> None:
    slots = Slots(data)
    installed = slots.install("b", artifact_v1.assignment, model_file=artifact_v1.model_path,
                              golden_file=artifact_v1.golden_path)
    raw = bytearray(installed.model_path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    installed.model_path.write_bytes(bytes(raw))
    with pytest.raises(VerificationError, match="does not match"):
        slots.load("b")


def test_slot_without_manifest_does_not_load(data: DataDir, artifact_v1: Artifact) -> None:
    slots = Slots(data)
    slots.install("b", artifact_v1.assignment, model_file=artifact_v1.model_path,
                  golden_file=artifact_v1.golden_path)
    (data.slots / "b" / "manifest.json").unlink()   # an install interrupted before its last step
    with pytest.raises(VerificationError, match="no manifest"):
        slots.load("b")


def test_install_refuses_source_bytes_that_differ_from_the_assignment(
        data: DataDir, artifact_v1: Artifact, artifact_v2: Artifact) -> None:
    with pytest.raises(VerificationError):
        Slots(data).install("a", artifact_v1.assignment, model_file=artifact_v2.model_path,
                            golden_file=artifact_v1.golden_path)
    assert not (data.slots / "a" / "manifest.json").exists()


def test_reinstall_over_a_half_written_slot_succeeds(data: DataDir, artifact_v1: Artifact, artifact_v2: Artifact) -> None:
    slots = Slots(data)
    slot = data.slots / "b"
    slot.mkdir()
    (slot / "model.onnx").write_bytes(b"half")
    slots.install("b", artifact_v2.assignment, model_file=artifact_v2.model_path,
                  golden_file=artifact_v2.golden_path)
    assert slots.load("b").assignment.version == "2"


def test_garbage_pointer_reads_as_no_active_slot(data: DataDir) -> None:
    data.active_pointer.write_text("../../etc")
    assert Slots(data).active() is None


def test_flip_back_and_forth_keeps_one_pointer_file(data: DataDir) -> None:
    slots = Slots(data)
    for letter in "abab":
        slots.flip(letter)
        assert slots.active() == letter
    assert sorted(p.name for p in data.root.iterdir() if p.name.startswith((".active", "active"))) == ["active"]
