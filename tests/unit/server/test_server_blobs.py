"""What only local blobs promise: the on-disk layout. The shared contract is in
tests/integration/server/test_server_blobs.py, run against local and S3 blobs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fleetcast.server.blobs import LocalBlobs
from fleetcast.server.errors import InvalidRequest


def test_commit_places_the_blob_at_its_content_address(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path / "blobs")
    sha, length = blobs.put_bytes(b"hello fleet")
    assert sha == hashlib.sha256(b"hello fleet").hexdigest() and length == 11
    assert blobs.path(sha) == tmp_path / "blobs" / "sha256" / sha[:2] / sha
    assert blobs.path(sha).read_bytes() == b"hello fleet"
    assert list(blobs.tmp_dir.iterdir()) == []


def test_names_that_are_not_sha256_never_become_paths(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path / "blobs")
    for bad in ["../../etc/passwd", "A" * 64, "ab", "g" * 64]:
        with pytest.raises(InvalidRequest):
            blobs.path(bad)


def test_sweep_removes_leftovers_of_a_crash(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path / "blobs")
    staged = blobs.stage(100)
    staged.write(b"partial")
    (blobs.tmp_dir / "compress-x").mkdir()
    assert blobs.sweep_temp() == 2
    assert list(blobs.tmp_dir.iterdir()) == []
