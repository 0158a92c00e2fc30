"""Downloads: resume with a byte-exact result, refusal of over-long or wrong data.

The fakes are real servers on 127.0.0.1: a gRPC DeviceService implementing Download
and an http.server answering Range requests.
"""

from __future__ import annotations

import hashlib
import time
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from fleetcast.agent.download import DownloadConfig, Downloader, GrpcTransport, HttpTransport
from fleetcast.agent.errors import DownloadError, VerificationError
from fleetcast.proto.v1 import device_pb2, device_pb2_grpc
from tests.support.ranged_http import RangedPayload, serving

BLOB = bytes(range(256)) * 4000          # ~1 MB
SHA = hashlib.sha256(BLOB).hexdigest()
TOKEN = "device-token"


class DownloadServicer(device_pb2_grpc.DeviceServiceServicer):
    """Serves `payload` for any sha256; can drop the stream or append extra bytes."""

    def __init__(self) -> None:
        self.payload = BLOB
        self.drop_after_bytes: list[int] = []     # one entry per call to drop
        self.offsets: list[int] = []
        self.tokens: list[str] = []

    def Download(self, request, context) -> Iterator[device_pb2.Chunk]:
        self.offsets.append(request.offset)
        self.tokens.append(dict(context.invocation_metadata()).get("authorization", ""))
        drop = self.drop_after_bytes.pop(0) if self.drop_after_bytes else None
        offset, sent = request.offset, 0
        while offset < len(self.payload):
            data = self.payload[offset:offset + 64 * 1024]
            if drop is not None and sent + len(data) > drop:
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection dropped")
            yield device_pb2.Chunk(offset=offset, data=data)
            offset += len(data)
            sent += len(data)


@pytest.fixture
def grpc_fake() -> Iterator[tuple[DownloadServicer, str]]:
    servicer = DownloadServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    device_pb2_grpc.add_DeviceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def downloader(tmp_path: Path, address: str, **config) -> tuple[Downloader, grpc.Channel]:
    channel = grpc.insecure_channel(address)
    stub = device_pb2_grpc.DeviceServiceStub(channel)
    directory = tmp_path / "downloads"
    directory.mkdir(exist_ok=True)
    return Downloader(directory, GrpcTransport(stub, TOKEN, timeout_s=10), DownloadConfig(**config)), channel


def test_grpc_download_is_byte_exact_and_sends_the_token(tmp_path, grpc_fake) -> None:
    servicer, address = grpc_fake
    dl, channel = downloader(tmp_path, address)
    path = dl.fetch(SHA, len(BLOB))
    channel.close()
    assert path.name == SHA and path.read_bytes() == BLOB
    assert servicer.tokens == [f"Bearer {TOKEN}"]
    assert not (tmp_path / "downloads" / f"{SHA}.part").exists()


def test_rate_limit_paces_the_download_and_keeps_it_byte_exact(tmp_path, grpc_fake) -> None:
    _, address = grpc_fake
    rate = 4 * len(BLOB)                   # the whole blob should take at least a quarter second
    dl, channel = downloader(tmp_path, address, rate_bps=rate)
    start = time.monotonic()
    path = dl.fetch(SHA, len(BLOB))
    elapsed = time.monotonic() - start
    channel.close()
    assert path.read_bytes() == BLOB
    # A lower bound only: pacing can make a download slower, never faster than the rate.
    assert elapsed >= (len(BLOB) - 64 * 1024) / rate


def test_stopping_agent_does_not_sit_out_a_rate_limit_pause(tmp_path, grpc_fake) -> None:
    _, address = grpc_fake
    dl, channel = downloader(tmp_path, address, rate_bps=1024)   # would take ~17 minutes
    threading.Timer(0.3, dl.stop.set).start()
    start = time.monotonic()
    with pytest.raises(DownloadError):
        dl.fetch(SHA, len(BLOB))
    channel.close()
    assert time.monotonic() - start < 60
    assert (tmp_path / "downloads" / f"{SHA}.part").exists()     # resumable from where it stopped


def test_dropped_connection_resumes_from_the_offset_reached(tmp_path, grpc_fake) -> None:
    servicer, address = grpc_fake
    servicer.drop_after_bytes = [300_000, 300_000]
    dl, channel = downloader(tmp_path, address)
    path = dl.fetch(SHA, len(BLOB))
    channel.close()
    assert path.read_bytes() == BLOB
    assert servicer.offsets[0] == 0 and 0 < servicer.offsets[1] < servicer.offsets[2]


def test_too_many_drops_raise_a_transient_error_and_keep_the_part(tmp_path, grpc_fake) -> None:
    servicer, address = grpc_fake
    servicer.drop_after_bytes = [100_000] * 10
    dl, channel = downloader(tmp_path, address, reconnects=1)
    with pytest.raises(DownloadError):
        dl.fetch(SHA, len(BLOB))
    kept = (tmp_path / "downloads" / f"{SHA}.part").stat().st_size
    assert 0 < kept < len(BLOB)
    servicer.drop_after_bytes = []
    assert dl.fetch(SHA, len(BLOB)).read_bytes() == BLOB      # the next attempt resumes
    assert servicer.offsets[-1] == kept
    channel.close()


def test_part_file_left_by_a_killed_agent_is_resumed_and_rehashed(tmp_path, grpc_fake) -> None:
    servicer, address = grpc_fake
    dl, channel = downloader(tmp_path, address)
    (tmp_path / "downloads" / f"{SHA}.part").write_bytes(BLOB[:123_457])
    assert dl.fetch(SHA, len(BLOB)).read_bytes() == BLOB
    assert servicer.offsets == [123_457]
    channel.close()


def test_download_rejects_artifact_longer_than_signed_length(tmp_path, grpc_fake) -> None:
    servicer, address = grpc_fake
    dl, channel = downloader(tmp_path, address)
    with pytest.raises(VerificationError, match="more than the signed length"):
        dl.fetch(SHA, len(BLOB) - 10)
    assert not list((tmp_path / "downloads").iterdir())
    channel.close()


def test_download_rejects_bytes_with_the_wrong_hash(tmp_path, grpc_fake) -> None:
    servicer, address = grpc_fake
    servicer.payload = BLOB[:-1] + b"\x00"
    dl, channel = downloader(tmp_path, address)
    with pytest.raises(VerificationError, match="do not hash"):
        dl.fetch(SHA, len(BLOB))
    assert not list((tmp_path / "downloads").iterdir())
    channel.close()


def test_corrupt_resumed_part_is_refetched_from_zero(tmp_path, grpc_fake) -> None:
    servicer, address = grpc_fake
    dl, channel = downloader(tmp_path, address)
    (tmp_path / "downloads" / f"{SHA}.part").write_bytes(b"\xff" * 1000)
    assert dl.fetch(SHA, len(BLOB)).read_bytes() == BLOB
    assert servicer.offsets == [1000, 0]
    channel.close()


def test_path_names_only_come_from_a_hex_sha256(tmp_path) -> None:
    dl = Downloader(tmp_path, GrpcTransport(None, TOKEN))
    with pytest.raises(VerificationError):
        dl.fetch("../../etc/passwd", 10)


class RangeHandler(RangedPayload):
    payload = BLOB
    seen: list[tuple[str | None, str | None]] = []
    cut_first_response_at: list[int] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).seen.append((self.headers.get("Range"), self.headers.get("Authorization")))
        if self.path != f"/v1/artifacts/{SHA}":
            self.send_error(404)
            return
        self.send_payload()


@pytest.fixture
def http_fake() -> Iterator[str]:
    RangeHandler.seen = []
    RangeHandler.cut_first_response_at = []
    with serving(RangeHandler) as url:
        yield url


def test_http_range_download_resumes_after_a_cut_response(tmp_path, http_fake) -> None:
    RangeHandler.cut_first_response_at = [200_000]
    dl = Downloader(tmp_path, HttpTransport(http_fake, TOKEN, timeout_s=5))
    assert dl.fetch(SHA, len(BLOB)).read_bytes() == BLOB
    ranges = [r for r, _ in RangeHandler.seen]
    assert ranges[0] is None and ranges[1] == "bytes=200000-"
    assert {a for _, a in RangeHandler.seen} == {f"Bearer {TOKEN}"}


def test_http_not_found_is_a_transient_error(tmp_path, http_fake) -> None:
    dl = Downloader(tmp_path, HttpTransport(http_fake, TOKEN, timeout_s=5), DownloadConfig(reconnects=0))
    with pytest.raises(DownloadError, match="404"):
        dl.fetch("0" * 64, 10)
