from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetcast.server.blobs import BlobStore
from fleetcast.server.errors import InvalidRequest, TooLarge


def test_commit_places_the_blob_at_its_content_address(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    sha, length = blobs.put_bytes(b"hello fleet")
    assert sha == hashlib.sha256(b"hello fleet").hexdigest() and length == 11
    assert blobs.path(sha) == tmp_path / "blobs" / "sha256" / sha[:2] / sha
    assert blobs.path(sha).read_bytes() == b"hello fleet"
    assert list(blobs.tmp_dir.iterdir()) == []


def test_staging_past_the_limit_raises_and_leaves_nothing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 100

    with pytest.raises(TooLarge):
        asyncio.run(blobs.stage_stream(chunks(), 999))
    assert list(blobs.tmp_dir.iterdir()) == []
    assert list((tmp_path / "blobs" / "sha256").iterdir()) == []


def test_names_that_are_not_sha256_never_become_paths(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    for bad in ["../../etc/passwd", "A" * 64, "ab", "g" * 64]:
        with pytest.raises(InvalidRequest):
            blobs.path(bad)


def test_sweep_removes_leftovers_of_a_crash(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    staged = blobs.stage(100)
    staged.write(b"partial")
    (blobs.tmp_dir / "compress-x").mkdir()
    assert blobs.sweep_temp() == 2
    assert list(blobs.tmp_dir.iterdir()) == []
