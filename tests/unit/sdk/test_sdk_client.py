"""fleetcast.sdk.Client against the fake REST server (no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from tests.unit.sdk.sdk_fake_server import SERVER, TOKEN, FakeServer, device_doc

from fleetcast.sdk import (
    ApiError,
    AuthError,
    Client,
    ConfigError,
    ConflictError,
    DeploymentTimeoutError,
    FleetcastError,
    IntegrityError,
    InvalidRequestError,
    NotFoundError,
    ServerError,
    TransportError,
)


def test_push_model_uploads_model_golden_version_and_levels_as_multipart(
    client: Client, fake: FakeServer, model_file: Path, tmp_path: Path
) -> None:
    golden = tmp_path / "golden.npz"
    golden.write_bytes(b"npz bytes")

    version = client.push_model(model_file, name="digits", version="7", golden=golden,
                                compress=["balanced", "fastest"])

    fields = fake.uploads[0]
    assert fields["model"] == ("digits.onnx", model_file.read_bytes())
    assert fields["golden"] == ("golden.npz", b"npz bytes")
    assert fields["version"][1] == b"7"
    assert fields["compress"][1] == b"balanced,fastest"
    assert (version.name, version.version) == ("digits", "7")
    assert version.variant("original").length == model_file.stat().st_size


def test_push_model_streams_the_body_and_reports_progress_up_to_its_length(
    client: Client, fake: FakeServer, model_file: Path
) -> None:
    seen: list[tuple[int, int]] = []

    client.push_model(model_file, name="digits", progress=lambda sent, total: seen.append((sent, total)))

    total = int(fake.requests[-1].headers["content-length"])
    assert len(seen) > 3  # read from disk in 64 KiB chunks: the 256 kB file went out in several
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)


def test_push_model_without_version_or_golden_sends_only_the_model(
    client: Client, fake: FakeServer, model_file: Path
) -> None:
    assert client.push_model(model_file, name="digits").version == "1"
    assert set(fake.uploads[0]) == {"model"}


def test_push_model_of_a_missing_file_names_it(client: Client, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.onnx"):
        client.push_model(tmp_path / "nope.onnx", name="digits")


@pytest.mark.parametrize(
    ("status", "expected"),
    [(400, InvalidRequestError), (401, AuthError), (403, AuthError), (404, NotFoundError),
     (409, ConflictError), (413, InvalidRequestError), (422, InvalidRequestError),
     (500, ServerError), (503, ServerError), (418, ApiError)],
)
def test_error_documents_map_onto_the_error_tree(status: int, expected: type[ApiError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"code": "some_code", "message": "what to do"}})

    with pytest.raises(expected) as raised:
        Client(SERVER, TOKEN, transport=httpx.MockTransport(handler)).list_models()

    assert (raised.value.status, raised.value.code, raised.value.message) == (status, "some_code", "what to do")
    assert isinstance(raised.value, FleetcastError)


def test_an_error_without_a_json_body_keeps_the_status_and_text() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="Bad Gateway from the proxy")

    with pytest.raises(ServerError) as raised:
        Client(SERVER, TOKEN, transport=httpx.MockTransport(handler)).list_devices()

    assert raised.value.code == "http_502"
    assert "Bad Gateway from the proxy" in raised.value.message


def test_a_wrong_token_raises_auth_error(fake: FakeServer) -> None:
    with pytest.raises(AuthError):
        Client(SERVER, "wrong", transport=httpx.MockTransport(fake)).list_models()


def test_an_unreachable_server_raises_transport_error_naming_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(TransportError, match="cannot reach the Fleetcast server at http://fleetcast.test"):
        Client(SERVER, TOKEN, transport=httpx.MockTransport(handler)).list_models()


def test_names_are_sent_as_one_path_segment(client: Client, fake: FakeServer) -> None:
    with pytest.raises(NotFoundError):
        client.get_model("../deployments")

    assert fake.requests[-1].url.raw_path == b"/v1/models/..%2Fdeployments"


def test_list_and_show_models(client: Client, model_file: Path) -> None:
    client.push_model(model_file, name="digits")
    client.push_model(model_file, name="digits")

    [summary] = client.list_models()
    model = client.get_model("digits")

    assert (summary.name, summary.latest_version, summary.versions) == ("digits", "2", 2)
    assert [v.version for v in model.versions] == ["1", "2"]
    assert client.get_version("digits", "2").variants[0].format == "onnx"


def test_download_model_writes_the_checked_bytes(client: Client, model_file: Path, tmp_path: Path) -> None:
    client.push_model(model_file, name="digits")
    out = tmp_path / "out"
    out.mkdir()

    path = client.download_model("digits", "1", out)

    assert path == out / "digits-1-original.onnx"
    assert path.read_bytes() == model_file.read_bytes()


def test_download_model_rejects_bytes_that_differ_from_the_published_sha256(
    client: Client, fake: FakeServer, model_file: Path, tmp_path: Path
) -> None:
    client.push_model(model_file, name="digits")
    fake.tamper_downloads = True

    with pytest.raises(IntegrityError, match="sha256"):
        client.download_model("digits", "1", tmp_path / "digits.onnx")

    assert list(tmp_path.iterdir()) == [model_file]  # neither the file nor a temp file is left


def test_deploy_posts_model_version_and_target(client: Client, fake: FakeServer, model_file: Path) -> None:
    fake.devices = {"cam-1": device_doc("cam-1"), "cam-2": device_doc("cam-2")}
    client.push_model(model_file, name="digits")

    deployment = client.deploy("digits", version="1", to="device:cam-1,cam-2")

    assert json.loads(fake.requests[-1].content) == {"model": "digits", "version": "1",
                                                     "target": "device:cam-1,cam-2"}
    assert (deployment.total, deployment.pending, deployment.devices) == (2, 2, ())   # counts, not rows
    assert not deployment.finished
    assert [d.device_id for d in client.get_deployment(deployment.id).devices] == ["cam-1", "cam-2"]
    assert [d.id for d in client.list_deployments()] == [deployment.id]


def test_get_deployment_reads_every_page_of_device_rows(client: Client, fake: FakeServer, model_file: Path) -> None:
    fake.devices = {f"cam-{i:04d}": device_doc(f"cam-{i:04d}") for i in range(2500)}
    client.push_model(model_file, name="digits")
    deployment = client.deploy("digits", version="1", to="all")

    full = client.get_deployment(deployment.id)

    assert [d.device_id for d in full.devices] == sorted(fake.devices)
    pages = [r for r in fake.requests if r.url.path.endswith("/devices")]
    assert [r.url.params.get("after") for r in pages] == [None, "cam-0999", "cam-1999"]


def test_wait_deployment_returns_once_every_device_has_an_outcome(
    client: Client, fake: FakeServer, model_file: Path
) -> None:
    fake.devices = {"cam-1": device_doc("cam-1"), "cam-2": device_doc("cam-2")}
    client.push_model(model_file, name="digits")
    deployment = client.deploy("digits")
    polls = []

    def progress(doc: dict) -> None:
        polls.append(1)
        for i, device in enumerate(doc["devices"]):
            if len(polls) > i + 1:
                device.update(state="committed", outcome="installed")

    fake.on_poll = progress
    updates = []

    done = client.wait_deployment(deployment.id, timeout_s=5, poll_s=0.01, on_update=updates.append)

    assert done.finished and not done.failed_devices
    assert [d.outcome for d in done.devices] == ["installed", "installed"]
    assert len(updates) == 3  # each change seen once


def test_wait_deployment_times_out_with_the_last_state(
    client: Client, fake: FakeServer, model_file: Path
) -> None:
    fake.devices = {"cam-1": device_doc("cam-1")}
    client.push_model(model_file, name="digits")
    deployment = client.deploy("digits")

    with pytest.raises(DeploymentTimeoutError, match="1 of 1 devices have no outcome") as raised:
        client.wait_deployment(deployment.id, timeout_s=0.05, poll_s=0.01)

    assert raised.value.deployment.id == deployment.id


def test_cancel_deployment_and_cancelling_twice_conflicts(
    client: Client, fake: FakeServer, model_file: Path
) -> None:
    fake.devices = {"cam-1": device_doc("cam-1")}
    client.push_model(model_file, name="digits")
    deployment = client.deploy("digits")

    cancelled = client.cancel_deployment(deployment.id)

    assert cancelled.state == "cancelled" and cancelled.finished
    with pytest.raises(ConflictError):
        client.cancel_deployment(deployment.id)


def test_devices_carry_active_model_and_serving_stats(client: Client, fake: FakeServer) -> None:
    fake.devices = {"cam-1": device_doc("cam-1")}

    [device] = client.list_devices()

    assert device == client.get_device("cam-1")
    assert (device.active_model, device.active_version) == ("digits", "1")
    assert device.active_stats is not None and device.active_stats.p95_ms == 1.3
    assert (device.inferences, device.errors) == (120, 2)


def test_from_data_dir_reads_server_json_and_operator_token(tmp_path: Path, fake: FakeServer) -> None:
    (tmp_path / "server.json").write_text(json.dumps({"http": SERVER, "grpc": "127.0.0.1:1"}))
    (tmp_path / "operator-token").write_text(TOKEN + "\n")

    with Client.from_data_dir(tmp_path, transport=httpx.MockTransport(fake)) as client:
        assert client.list_models() == []


def test_from_data_dir_without_a_running_server_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a server running with --data"):
        Client.from_data_dir(tmp_path)
