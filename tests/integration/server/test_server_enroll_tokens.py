"""Enroll tokens the operator makes: single use, expiry, group; and never on argv."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import grpc
import pytest

from fleetcast.proto import identity
from fleetcast.proto.v1 import device_pb2 as pb
from fleetcast.sdk import cli
from tests.integration.server.conftest import RunningServer


def _enroll(server: RunningServer, device_id: str, token: str, group: str = "") -> pb.EnrollResponse:
    csr = identity.certificate_request(identity.generate_key(), device_id)
    return server.stub().Enroll(pb.EnrollRequest(device_id=device_id, hardware_class="x86-cpu", enroll_token=token,
                                                 group=group, csr=csr), timeout=10)


def _refused(server: RunningServer, device_id: str, token: str, group: str = "") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        _enroll(server, device_id, token, group)
    return e.value


def test_a_single_use_group_token_admits_one_device_into_its_group(server: RunningServer) -> None:
    status, doc = server.json("POST", "/v1/enroll-tokens", {"group": "line-2", "uses": 1})
    assert status == 201, doc
    reply = _enroll(server, "tok-a", doc["token"])
    assert b"BEGIN CERTIFICATE" in reply.certificate
    status, device = server.json("GET", "/v1/devices/tok-a")
    assert status == 200 and device["group"] == "line-2"

    used = _refused(server, "tok-b", doc["token"])
    assert used.code() == grpc.StatusCode.UNAUTHENTICATED and "used up" in (used.details() or "")
    status, listed = server.json("GET", "/v1/enroll-tokens")
    [row] = [t for t in listed["enroll_tokens"] if t["name"] == doc["name"]]
    assert row["uses_left"] == 0 and "token" not in row


def test_a_group_token_refuses_another_group_without_using_itself_up(server: RunningServer) -> None:
    _, doc = server.json("POST", "/v1/enroll-tokens", {"group": "line-3", "uses": 1})
    wrong = _refused(server, "tok-c", doc["token"], group="other")
    assert wrong.code() == grpc.StatusCode.INVALID_ARGUMENT and "line-3" in (wrong.details() or "")
    _enroll(server, "tok-c", doc["token"])   # the refused attempt took no use


def test_an_expired_token_is_refused(server: RunningServer) -> None:
    _, doc = server.json("POST", "/v1/enroll-tokens", {"expires_s": 1})
    time.sleep(1.2)
    expired = _refused(server, "tok-d", doc["token"])
    assert expired.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in (expired.details() or "")


def test_bad_token_requests_get_400(server: RunningServer) -> None:
    for body in ({"uses": 0}, {"expires_s": "soon"}, {"group": "a/b"}, ["x"]):
        status, doc = server.json("POST", "/v1/enroll-tokens", body)
        assert status == 400, (body, doc)


def test_the_cli_writes_a_new_token_to_a_private_file(server: RunningServer, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lab-token"
    rc = cli.main(["enroll-token", "create", "--group", "lab", "--expires", "24h", "--uses", "1", "--out", str(out),
                   "--data", str(server.data)])
    assert rc == 0, capsys.readouterr().err
    token = out.read_text().strip()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and token not in capsys.readouterr().out
    _enroll(server, "tok-e", token)

