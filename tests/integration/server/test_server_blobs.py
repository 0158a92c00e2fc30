"""One blob-store suite, run against local disk and a real S3 server (moto, a process
on loopback): what `fleetcast.server.blobs.Blobs` promises, whichever store holds the blobs."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import urllib3

from fleetcast.server.blobs import Blobs, LocalBlobs
from fleetcast.server.errors import ArtifactNotFound, BlobsUnavailable, InvalidRequest, TooLarge
from fleetcast.server.s3blobs import S3Blobs, parse_s3_url
from tests.support.s3 import S3Server

MiB = 1024**2
PART_BYTES = 5 * MiB    # S3's smallest part: blobs above it go up as multipart uploads


def _s3(server: S3Server, tmp_path: Path, bucket: str | None = None) -> S3Blobs:
    name = bucket or server.make_bucket(f"blobs-{secrets.token_hex(4)}")
    return S3Blobs(client=server.client(), bucket=name, prefix="fleet/blobs", tmp_dir=tmp_path / "tmp",
                   multipart_threshold_bytes=PART_BYTES, part_bytes=PART_BYTES)


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Blobs]:
    if request.param == "local":
        yield LocalBlobs(tmp_path / "blobs")
    else:
        yield _s3(request.getfixturevalue("s3_server"), tmp_path)


def _committed(blobs: Blobs) -> set[str]:
    """Every object or file the store holds, temp ones included."""
    if isinstance(blobs, S3Blobs):
        return {item["Key"] for item in blobs._listing(blobs.prefix)}
    assert isinstance(blobs, LocalBlobs)
    return {str(p.relative_to(blobs.root)) for p in blobs.root.rglob("*") if p.is_file()}


def test_a_committed_blob_is_readable_by_its_content_address_from_any_offset(blobs: Blobs) -> None:
    sha, length = blobs.put_bytes(b"hello fleet")
    assert sha == hashlib.sha256(b"hello fleet").hexdigest() and length == 11
    assert blobs.exists(sha) and blobs.length(sha) == 11
    with blobs.open(sha) as f:
        assert f.read() == b"hello fleet"
    with blobs.open(sha, 6) as f:
        assert f.read() == b"fleet"
    with blobs.open(sha, 11) as f:
        assert f.read() == b""
    with blobs.local_file(sha) as path:
        assert path.read_bytes() == b"hello fleet"
    assert list(blobs.tmp_dir.iterdir()) == []
    assert _committed(blobs) == {f"{'fleet/blobs/' if isinstance(blobs, S3Blobs) else ''}sha256/{sha[:2]}/{sha}"}


def test_a_blob_larger_than_one_part_goes_up_whole_and_checked(blobs: Blobs, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(2 * PART_BYTES + 12345))
    sha, length = blobs.put_file(source)
    assert (sha, length) == (hashlib.sha256(source.read_bytes()).hexdigest(), source.stat().st_size)
    with blobs.open(sha, PART_BYTES - 10) as f:
        assert f.read() == source.read_bytes()[PART_BYTES - 10:]
    assert all("/tmp/" not in key for key in _committed(blobs)), _committed(blobs)


def test_committing_the_same_bytes_twice_keeps_one_blob(blobs: Blobs) -> None:
    first = blobs.put_bytes(b"same")
    assert blobs.put_bytes(b"same") == first
    assert len(_committed(blobs)) == 1


def test_staging_past_the_limit_raises_and_leaves_nothing(blobs: Blobs) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 100

    with pytest.raises(TooLarge):
        asyncio.run(blobs.stage_stream(chunks(), 999))
    assert list(blobs.tmp_dir.iterdir()) == []
    assert _committed(blobs) == set()


def test_a_missing_blob_is_not_found_and_a_bad_name_is_refused(blobs: Blobs) -> None:
    absent = hashlib.sha256(b"never stored").hexdigest()
    assert not blobs.exists(absent)
    with pytest.raises(ArtifactNotFound):
        blobs.length(absent)
    with pytest.raises(ArtifactNotFound):
        blobs.open(absent)
    for bad in ["../../etc/passwd", "A" * 64, "ab", "g" * 64]:
        with pytest.raises(InvalidRequest):
            blobs.open(bad)


def test_sweep_removes_only_old_unreferenced_blobs(blobs: Blobs) -> None:
    kept, _ = blobs.put_bytes(b"referenced")
    orphan, _ = blobs.put_bytes(b"left by a crash")
    assert blobs.sweep_orphans(lambda sha: sha == kept, grace_s=3600) == 0   # both are young
    assert blobs.sweep_orphans(lambda sha: sha == kept, grace_s=3600, now=time.time() + 7200) == 1
    assert blobs.exists(kept) and not blobs.exists(orphan)


def test_the_readiness_check_passes_on_a_working_store(blobs: Blobs) -> None:
    blobs.check_ready()


def test_an_object_store_hands_out_presigned_urls_that_serve_ranges(blobs: Blobs) -> None:
    sha, _ = blobs.put_bytes(b"0123456789")
    url = blobs.presigned_url(sha, expires_s=60)
    if isinstance(blobs, LocalBlobs):
        assert url is None
        return
    assert url is not None and "X-Amz-Signature=" in url
    whole = urllib3.request("GET", url)
    assert whole.status == 200 and whole.data == b"0123456789"
    part = urllib3.request("GET", url, headers={"Range": "bytes=4-"})
    assert part.status == 206 and part.data == b"456789"


def test_s3_leaves_no_temp_object_and_no_blob_when_the_bucket_is_missing(s3_server: S3Server, tmp_path: Path) -> None:
    blobs = _s3(s3_server, tmp_path, bucket="no-such-bucket-here")
    with pytest.raises(BlobsUnavailable, match="no-such-bucket-here"):
        blobs.put_bytes(b"nowhere to go")
    with pytest.raises(BlobsUnavailable, match="no-such-bucket-here"):
        blobs.check_ready()
    assert list(blobs.tmp_dir.iterdir()) == []


def test_s3_sweep_removes_temp_objects_and_unfinished_uploads_after_the_grace(s3_server: S3Server,
                                                                             tmp_path: Path) -> None:
    blobs = _s3(s3_server, tmp_path)
    client = blobs.client
    client.put_object(Bucket=blobs.bucket, Key="fleet/blobs/tmp/crashed", Body=b"half")
    client.create_multipart_upload(Bucket=blobs.bucket, Key="fleet/blobs/tmp/crashed-multipart")
    blobs.sweep_orphans(lambda sha: False, grace_s=3600)
    assert _committed(blobs) == {"fleet/blobs/tmp/crashed"}    # young: another replica may be writing it
    blobs.sweep_orphans(lambda sha: False, grace_s=3600, now=time.time() + 7200)
    assert _committed(blobs) == set()
    assert client.list_multipart_uploads(Bucket=blobs.bucket).get("Uploads", []) == []


@pytest.mark.parametrize("url", ["s3://key:secret@bucket/p", "s3://Bad_Bucket/p", "s3://bucket/../up",
                                 "s3://bucket/p?x=1"])
def test_s3_urls_with_secrets_or_odd_names_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_s3_url(url)


def test_an_s3_url_names_its_bucket_and_prefix() -> None:
    assert parse_s3_url("s3://models.example/fleet/blobs/") == ("models.example", "fleet/blobs")
    assert parse_s3_url("s3://models") == ("models", "")
