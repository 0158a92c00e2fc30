"""What schemathesis found against the REST API, kept as tests, and a small seeded
schemathesis run (`fuzz/api.py`; `make schemathesis` runs a longer one)."""

from __future__ import annotations

import json
from pathlib import Path

from fuzz import api
from tests.integration.server.conftest import RunningServer


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


def test_multipart_upload_without_a_boundary_is_a_400_not_a_crash(server: RunningServer) -> None:
    status, _, body = server.request("POST", "/v1/models/fuzzed", body=b"x",
                                     headers={"Content-Type": "multipart/form-data"})
    assert status == 400, body
    assert "boundary" in json.loads(body)["error"]["message"]


def test_multipart_part_with_a_malformed_header_is_a_400_not_a_crash(server: RunningServer) -> None:
    body = (b"--b1\r\nContent-Disposition: form-data; name=\"\xf3\xa9\x08\tL\"\r\n\r\n{}\r\n--b1--\r\n")
    status, _, answer = server.request("POST", "/v1/models/fuzzed", body=body,
                                       headers={"Content-Type": "multipart/form-data; boundary=b1"})
    assert status == 400, answer
    assert error_code(answer) == "invalid_request"


def test_undeclared_method_gets_405_with_an_allow_header(server: RunningServer) -> None:
    status, headers, body = server.request("TRACE", "/v1/models")
    assert status == 405, body
    assert "GET" in headers.get("Allow", ""), headers


def test_seeded_schemathesis_run_finds_no_failure(server: RunningServer, tmp_path: Path) -> None:
    result = api.run_against(server.http, server.operator_token, examples=5, seed=1, out=tmp_path,
                             ca=server.data / "server-ca.pem", timeout_s=120)
    assert result.returncode == 0, result.stdout[-6000:]
    assert "request crashed" not in server.log.read_text(errors="replace")
