"""A real `fleetcast server` subprocess on free loopback ports, and clients for it."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from fleetcast.proto.v1 import device_pb2 as pb
from fleetcast.proto.v1 import device_pb2_grpc as pb_grpc
from tests.support.broker import Broker
from tests.support.waiting import log_tail, wait_for

MAX_UPLOAD_BYTES = 200_000


@dataclass
class RunningServer:
    data: Path
    http: str
    grpc: str
    operator_token: str
    enroll_token: str
    process: subprocess.Popen[bytes]
    log: Path

    def request(self, method: str, path: str, *, body: bytes | None = None, token: str | None = "operator",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        h = dict(headers or {})
        if token == "operator":
            h["Authorization"] = f"Bearer {self.operator_token}"
        elif token:
            h["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.http + path, data=body, method=method, headers=h)
        context = ssl.create_default_context(cafile=str(self.data / "server-ca.pem"))
        try:
            with urllib.request.urlopen(req, timeout=30, context=context) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method: str, path: str, doc: Any = None, **kw: Any) -> tuple[int, Any]:
        body = None if doc is None else json.dumps(doc).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        status, _, data = self.request(method, path, body=body, headers=headers, **kw)
        return status, json.loads(data) if data else None

    def upload(self, name: str, fields: dict[str, bytes | str], **kw: Any) -> tuple[int, Any]:
        body, content_type = multipart(fields)
        status, _, data = self.request("POST", f"/v1/models/{name}", body=body,
                                       headers={"Content-Type": content_type}, **kw)
        return status, json.loads(data)

    def channel(self) -> grpc.Channel:
        """A gRPC channel to the device port, TLS pinned to the server's CA."""
        credentials = grpc.ssl_channel_credentials((self.data / "server-ca.pem").read_bytes())
        return grpc.secure_channel(self.grpc, credentials)

    def stub(self) -> pb_grpc.DeviceServiceStub:
        return pb_grpc.DeviceServiceStub(self.channel())

    def enroll(self, device_id: str, group: str = "lab") -> str:
        reply = self.stub().Enroll(pb.EnrollRequest(device_id=device_id, hardware_class="x86-cpu",
                                                    backends=["onnxruntime"], enroll_token=self.enroll_token,
                                                    group=group), timeout=10)
        return reply.device_token


def multipart(fields: dict[str, bytes | str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = bytearray()
    for name, value in fields.items():
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, bytes):
            out += f'Content-Disposition: form-data; name="{name}"; filename="{name}.bin"\r\n'.encode()
            out += b"Content-Type: application/octet-stream\r\n\r\n" + value + b"\r\n"
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def auth(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@contextmanager
def launch(workdir: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    """Runs `fleetcast server` on free loopback ports until the block ends (then SIGTERM);
    `env` is added to the environment (the AWS variables of a test S3 server, say)."""
    data = workdir / "data"
    log = workdir / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fleetcast.sdk.console", "server", "--data", str(data), "--http", "127.0.0.1:0",
             "--grpc", "127.0.0.1:0", "--max-upload-bytes", str(MAX_UPLOAD_BYTES), "-v", *extra],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
    try:
        info = wait_for(lambda: json.loads((data / "server.json").read_text()), timeout_s=30,
                        what="server.json", context=lambda: log_tail(log, label="server"))
        yield RunningServer(data=data, http=info["http"], grpc=info["grpc"],
                            operator_token=(data / "operator-token").read_text().strip(),
                            enroll_token=(data / "enroll-token").read_text().strip(), process=process, log=log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with launch(tmp_path_factory.mktemp("server")) as running:
        yield running


@contextmanager
def launch_with_broker(workdir: Path, broker: Broker, *extra: str) -> Iterator[RunningServer]:
    """`launch` with `--mqtt` on the test broker's server listener; the broker accepts the
    certificates of the CAs seeded into the server's data dir."""
    broker.seed_server_data(workdir / "data")
    with launch(workdir, "--mqtt", broker.server_url, *extra) as running:
        yield running
