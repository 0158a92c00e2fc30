"""A server whose blobs are in S3 (moto, a real server process on loopback): gRPC and
HTTP downloads stream from the bucket, ranges included, and LocateArtifact hands a
device a presigned URL for known artifacts only. A server on local blobs locates none."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import grpc
import pytest
import urllib3

from fleetcast.proto.v1 import device_pb2 as pb
from tests.integration.server.conftest import RunningServer, auth, launch
from tests.support import models
from tests.support.s3 import S3Server

PREFIX = "fleet"


@pytest.fixture(scope="module")
def s3_backed(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    bucket = s3_server.make_bucket(f"it-{secrets.token_hex(4)}")
    with launch(tmp_path_factory.mktemp("s3-server"), "--blobs", f"s3://{bucket}/{PREFIX}",
                env=s3_server.environ()) as running:
        yield running, bucket


@pytest.fixture(scope="module")
def stored(s3_backed: tuple[RunningServer, str], s3_server: S3Server) -> tuple[dict, bytes]:
    server, bucket = s3_backed
    model = models.to_bytes(models.tiny_classifier(seed=11))
    status, doc = server.upload("s3-model", {"model": model})
    assert status == 201, doc
    variant = doc["variants"][0]
    key = f"{PREFIX}/sha256/{variant['sha256'][:2]}/{variant['sha256']}"
    assert s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read() == model
    return variant, model


def test_grpc_download_streams_from_the_bucket_from_any_offset(s3_backed, stored) -> None:
    server, _ = s3_backed
    variant, model = stored
    token = server.enroll("s3-grpc-1")
    for offset in (0, len(model) // 3, len(model)):
        chunks = list(server.stub().Download(pb.DownloadRequest(sha256=variant["sha256"], offset=offset),
                                             metadata=auth(token), timeout=10))
        assert b"".join(c.data for c in chunks) == model[offset:]
    with pytest.raises(grpc.RpcError) as e:
        list(server.stub().Download(pb.DownloadRequest(sha256="ab" * 32), metadata=auth(token), timeout=10))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_http_download_streams_from_the_bucket_with_ranges(s3_backed, stored) -> None:
    server, _ = s3_backed
    variant, model = stored
    token = server.enroll("s3-http-1")
    path = f"/v1/artifacts/{variant['sha256']}"
    status, _, whole = server.request("GET", path, token=token)
    assert status == 200 and whole == model
    status, headers, part = server.request("GET", path, token=token, headers={"Range": "bytes=100-"})
    assert status == 206 and part == model[100:]
    assert headers["Content-Range"] == f"bytes 100-{len(model) - 1}/{len(model)}"
    status, _, part = server.request("GET", path, token=token, headers={"Range": "bytes=-10"})
    assert status == 206 and part == model[-10:]
    assert server.request("GET", path, token=token, headers={"Range": f"bytes={len(model) + 10}-"})[0] == 416
    assert server.request("GET", path, token=token, headers={"Range": "pages=1-2"})[0] == 416


def test_locate_hands_out_a_presigned_url_for_known_artifacts_only(s3_backed, stored) -> None:
    server, _ = s3_backed
    variant, model = stored
    token = server.enroll("s3-locate-1")
    found = server.stub().LocateArtifact(pb.LocateRequest(sha256=variant["sha256"]), metadata=auth(token), timeout=10)
    assert "X-Amz-Signature=" in found.url and found.expires_unix_s > 0
    answer = urllib3.request("GET", found.url)
    assert answer.status == 200 and answer.data == model
    for sha, code in (("ab" * 32, grpc.StatusCode.NOT_FOUND), ("../etc/passwd", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.RpcError) as e:
            server.stub().LocateArtifact(pb.LocateRequest(sha256=sha), metadata=auth(token), timeout=10)
        assert e.value.code() == code
    with pytest.raises(grpc.RpcError) as e:
        server.stub().LocateArtifact(pb.LocateRequest(sha256=variant["sha256"]), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_readiness_checks_the_bucket(s3_backed) -> None:
    server, _ = s3_backed
    status, doc = server.json("GET", "/readyz", token=None)
    assert status == 200 and doc["checks"]["blobs"]["ok"], doc


def test_a_server_on_local_blobs_locates_no_url(server: RunningServer) -> None:
    status, doc = server.upload("local-locate", {"model": models.to_bytes(models.tiny_classifier(seed=12))})
    assert status == 201, doc
    token = server.enroll("local-locate-1")
    found = server.stub().LocateArtifact(pb.LocateRequest(sha256=doc["variants"][0]["sha256"]),
                                         metadata=auth(token), timeout=10)
    assert (found.url, found.expires_unix_s) == ("", 0)
