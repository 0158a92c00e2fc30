"""Downloads straight from a located URL (presigned S3 or CDN): Range resumes, a fresh URL
after 403, the gRPC fallback when the URL fails, and the same checks on the bytes.

The URL side is a real http.server on 127.0.0.1; the locator and the fallback are fakes of
our own `Locator` and `Transport` interfaces that record how they were used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcast.agent.direct_download import DirectTransport
from fleetcast.agent.download import Downloader
from fleetcast.agent.errors import VerificationError
from tests.support.ranged_http import RangedPayload, serving

BLOB = bytes(range(256)) * 2000          # ~0.5 MB
SHA = hashlib.sha256(BLOB).hexdigest()


class ObjectStore(RangedPayload):
    """Serves BLOB at /live/<sha256>; /expired/... answers 403, anything else 404."""

    payload = BLOB
    seen: list[tuple[str, str | None, str | None]] = []
    cut_first_response_at: list[int] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).seen.append((self.path, self.headers.get("Range"), self.headers.get("Authorization")))
        if self.path.startswith("/expired/"):
            self.send_error(403)
            return
        if self.path != f"/live/{SHA}":
            self.send_error(404)
            return
        self.send_payload()


@pytest.fixture
def store() -> Iterator[str]:
    ObjectStore.seen, ObjectStore.cut_first_response_at, ObjectStore.payload = [], [], BLOB
    with serving(ObjectStore) as url:
        yield url


class Locator:
    """Hands out the given URLs in turn (the last one again when they run out)."""

    def __init__(self, *urls: str) -> None:
        self.urls = list(urls)
        self.asked = 0

    def locate(self, sha256: str) -> str:
        self.asked += 1
        return self.urls.pop(0) if len(self.urls) > 1 else self.urls[0]


class Fallback:
    """The gRPC Download's stand-in: serves BLOB and records the offsets asked for."""

    def __init__(self) -> None:
        self.offsets: list[int] = []

    def open(self, sha256: str, offset: int) -> Iterator[bytes]:
        self.offsets.append(offset)
        yield BLOB[offset:]


def fetch(tmp_path: Path, locator: Locator, fallback: Fallback) -> Path:
    directory = tmp_path / "downloads"
    directory.mkdir(exist_ok=True)
    return Downloader(directory, DirectTransport(locator, fallback, chunk_bytes=64 * 1024)).fetch(SHA, len(BLOB))


def test_an_artifact_comes_from_its_url_without_the_device_token_or_the_fallback(tmp_path, store) -> None:
    fallback = Fallback()
    assert fetch(tmp_path, Locator(f"{store}/live/{SHA}"), fallback).read_bytes() == BLOB
    assert fallback.offsets == []
    assert [(path, auth) for path, _, auth in ObjectStore.seen] == [(f"/live/{SHA}", None)]


def test_an_expired_url_is_replaced_by_a_fresh_one(tmp_path, store) -> None:
    locator, fallback = Locator(f"{store}/expired/{SHA}", f"{store}/live/{SHA}"), Fallback()
    assert fetch(tmp_path, locator, fallback).read_bytes() == BLOB
    assert locator.asked == 2 and fallback.offsets == []
    assert [path for path, _, _ in ObjectStore.seen] == [f"/expired/{SHA}", f"/live/{SHA}"]


def test_a_cut_connection_resumes_from_the_url_with_range(tmp_path, store) -> None:
    ObjectStore.cut_first_response_at = [100_000]
    fallback = Fallback()
    assert fetch(tmp_path, Locator(f"{store}/live/{SHA}"), fallback).read_bytes() == BLOB
    assert fallback.offsets == []
    ranges = [rng for _, rng, _ in ObjectStore.seen]
    assert ranges[0] is None and ranges[1] is not None and 0 < int(ranges[1].split("=")[1].rstrip("-")) < len(BLOB)


@pytest.mark.parametrize("path", ["/missing", "/expired/x"])
def test_a_failing_url_falls_back_to_the_grpc_download(tmp_path, store, path: str) -> None:
    fallback = Fallback()
    assert fetch(tmp_path, Locator(f"{store}{path}"), fallback).read_bytes() == BLOB
    assert fallback.offsets == [0]


def test_a_url_nobody_answers_falls_back_to_the_grpc_download(tmp_path) -> None:
    fallback = Fallback()
    assert fetch(tmp_path, Locator(f"http://127.0.0.1:9/live/{SHA}"), fallback).read_bytes() == BLOB
    assert fallback.offsets == [0]


@pytest.mark.parametrize("url", ["http://cdn.example/live/x", "ftp://127.0.0.1/x", "file:///etc/passwd", ""])
def test_plain_http_off_loopback_and_other_schemes_are_never_fetched(tmp_path, store, url: str) -> None:
    fallback = Fallback()
    assert fetch(tmp_path, Locator(url), fallback).read_bytes() == BLOB
    assert fallback.offsets == [0] and ObjectStore.seen == []


def test_bytes_from_the_url_that_do_not_match_the_signed_hash_are_refused(tmp_path, store) -> None:
    ObjectStore.payload = BLOB[:-1] + b"\x00"
    fallback = Fallback()
    with pytest.raises(VerificationError, match="do not hash"):
        fetch(tmp_path, Locator(f"{store}/live/{SHA}"), fallback)
    assert fallback.offsets == [] and not list((tmp_path / "downloads").iterdir())
