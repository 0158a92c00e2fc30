"""Slot manifests read back from disk at start and on every load."""

from __future__ import annotations

from fleetcast.agent.errors import VerificationError
from fleetcast.agent.slots import manifest_digest, parse_manifest


def test_one_input(data: bytes) -> None:
    try:
        assignment = parse_manifest(data)
    except VerificationError:
        return
    manifest_digest(assignment)   # what the flow computes from it must not fail either
