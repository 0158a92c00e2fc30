"""Downloads that bypass the server. Blobs in an S3 object store (moto as a real server
process): devices download straight from presigned URLs, the server's gRPC download
stays idle, and an object altered in the bucket is refused by the device, which keeps
serving what it had. A CDN base URL: devices fetch from it, and from the server's gRPC
download while it is down."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import urllib3

from tests.support import models
from tests.support.deployments import deploy, deploy_and_install, push, show, wait_outcomes, wait_serving
from tests.support.processes import AgentProcess, ServerProcess
from tests.support.s3 import S3Server
from tests.support.waiting import free_port, port_accepts, wait_for

pytestmark = pytest.mark.e2e

PREFIX = "fleet/blobs"


def key_of(sha256: str) -> str:
    return f"{PREFIX}/sha256/{sha256[:2]}/{sha256}"


def gets_of(s3: S3Server, bucket: str, sha256: str) -> tuple[int, int]:
    """(presigned GETs, other GETs) of one blob in moto's request log."""
    path = f"/{bucket}/{key_of(sha256)}"
    lines = [line for line in s3.requests() if f'"GET {path}' in line]
    presigned = sum(1 for line in lines if "X-Amz-Signature=" in line)
    return presigned, len(lines) - presigned


def test_devices_install_from_presigned_urls_and_refuse_an_object_altered_in_the_bucket(
    s3_server: S3Server, new_server, new_agent, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket(f"fleet-{secrets.token_hex(4)}")
    server: ServerProcess = new_server(extra_args=["--blobs", f"s3://{bucket}/{PREFIX}"], env=s3_server.environ())
    agent: AgentProcess = new_agent(server, "dev-s3")
    good = models.write(models.tiny_classifier(7), tmp_path / "good.onnx")
    version = push(server, good, name="s3model").version
    sha = models.sha256_of(good)
    assert s3_server.client().head_object(Bucket=bucket, Key=key_of(sha))["ContentLength"] == good.stat().st_size
    assert not any(p.is_file() for p in (server.blobs_dir / "sha256").rglob("*")), "a blob was kept on local disk"

    deploy_and_install(server, [agent], "s3model", version)
    wait_serving(agent, "s3model", version)
    assert models.sha256_of(agent.active_model_path()) == sha
    presigned, other = gets_of(s3_server, bucket, sha)
    # Every read of the model came from the device's presigned URL; the server's gRPC
    # download (which reads the bucket with its own signed GETs) was never used.
    assert presigned >= 1 and other == 0, f"presigned={presigned} other={other}\n{s3_server.log_tail()}"

    # The operator's download goes through the server (it streams from the bucket, ranges too).
    with server.client() as fc:
        fetched = fc.download_model("s3model", version, tmp_path / "fetched.onnx")
    assert fetched.read_bytes() == good.read_bytes()
    pool = urllib3.PoolManager(ca_certs=str(server.server_ca))
    tail = pool.request("GET", f"{server.http}/v1/models/s3model/versions/{version}/download",
                        headers={"Authorization": f"Bearer {server.operator_token}", "Range": "bytes=100-"})
    assert tail.status == 206 and tail.data == good.read_bytes()[100:]

    bad = models.write(models.tiny_classifier(8), tmp_path / "bad.onnx")
    bad_version = push(server, bad, name="s3model").version
    bad_sha = models.sha256_of(bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x01
    s3_server.client().put_object(Bucket=bucket, Key=key_of(bad_sha), Body=bytes(data))

    deployment = deploy(server, "s3model", version=bad_version, devices=[agent.device_id])
    entry = wait_outcomes(server, deployment, devices=[agent.device_id], timeout_s=90, logs=agent.log_tail)[agent.device_id]
    assert entry["outcome"] in {"failed", "rolled_back"}, f"expected a refusal: {show(entry)}\n{agent.log_tail()}"
    reason = str(entry.get("reason") or "").lower()
    assert any(word in reason for word in ("sha256", "hash", "digest")), f"reason does not name the hash: {show(entry)}"
    assert gets_of(s3_server, bucket, bad_sha)[0] >= 1
    wait_serving(agent, "s3model", version)
    assert models.sha256_of(agent.active_model_path()) == sha


def test_devices_download_through_a_cdn_base_url_and_fall_back_to_grpc_when_it_is_down(
    new_server, new_agent, tmp_path: Path
) -> None:
    port = free_port()
    server: ServerProcess = new_server(extra_args=["--download-base-url", f"http://127.0.0.1:{port}/"])
    cdn_log = tmp_path / "cdn.log"
    # The CDN's stand-in: a static file server whose origin is the server's blob directory.
    with open(cdn_log, "wb") as log:
        cdn = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                "--directory", str(server.blobs_dir)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_accepts("127.0.0.1", port), timeout_s=30, what="the CDN stand-in to listen")
        agent: AgentProcess = new_agent(server, "dev-cdn")
        first = models.write(models.tiny_classifier(9), tmp_path / "first.onnx")
        version = push(server, first, name="cdnmodel").version
        deploy_and_install(server, [agent], "cdnmodel", version)
        sha = models.sha256_of(first)
        assert f"GET /sha256/{sha[:2]}/{sha} " in cdn_log.read_text(), cdn_log.read_text()
    finally:
        cdn.terminate()
        cdn.wait(timeout=10)

    second = models.write(models.tiny_classifier(10), tmp_path / "second.onnx")
    second_version = push(server, second, name="cdnmodel").version
    deploy_and_install(server, [agent], "cdnmodel", second_version)
    wait_serving(agent, "cdnmodel", second_version)
    assert models.sha256_of(agent.active_model_path()) == models.sha256_of(second)
    assert "using the gRPC download" in agent.log_path.read_text(), agent.log_tail()
