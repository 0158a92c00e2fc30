from __future__ import annotations

import queue
import threading

import grpc
import pytest
from tuf.api.dsse import SimpleEnvelope

from fleetcast.proto import telemetry as buckets
from fleetcast.proto.v1 import device_pb2 as pb
from fleetcast.server.signing import device_bin
from tests.integration.server.conftest import RunningServer, auth
from tests.support import models
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def release(server: RunningServer) -> dict:
    status, doc = server.upload("grpc-model", {"model": models.to_bytes(models.tiny_classifier(seed=7))})
    assert status == 201, doc
    return doc["variants"][0]


def test_calls_without_a_device_token_are_unauthenticated(server: RunningServer) -> None:
    stub = server.stub()
    with pytest.raises(grpc.RpcError) as e:
        stub.FetchMetadata(pb.MetadataRequest(repository=pb.REPOSITORY_IMAGE, name="timestamp.json"), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        stub.ReportStatus(pb.StatusReport(), metadata=auth("forged"), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        stub.Enroll(pb.EnrollRequest(device_id="d", hardware_class="x86-cpu", enroll_token="guess"), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _collect(stream: grpc.Future, into: queue.Queue) -> None:
    try:
        for notice in stream:
            into.put(notice)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:  # the test cancels the stream when done
            raise


def test_watch_sends_the_current_notice_then_one_after_a_deployment(server: RunningServer, release: dict) -> None:
    token = server.enroll("watcher-1", group="watchers")
    stream = server.stub().WatchAssignments(pb.WatchRequest(device_id="watcher-1"), metadata=auth(token), timeout=30)
    notices: queue.Queue[pb.AssignmentNotice] = queue.Queue()
    threading.Thread(target=_collect, args=(stream, notices), daemon=True).start()
    first = notices.get(timeout=10)
    assert first.deployment_id == ""
    status, doc = server.json("POST", "/v1/deployments", {"model": "grpc-model", "target": "group:watchers"})
    assert status == 201, doc
    second = notices.get(timeout=10)
    assert second.deployment_id == doc["id"] and second.director_version > first.director_version
    stream.cancel()

    def fetch(name: str) -> bytes:
        return server.stub().FetchMetadata(
            pb.MetadataRequest(repository=pb.REPOSITORY_DIRECTOR, name=name), metadata=auth(token), timeout=10).data

    snapshot = SimpleEnvelope.from_bytes(fetch("snapshot.json")).get_signed()
    role = device_bin("watcher-1")
    name = f"{snapshot.meta[role + '.json'].version}.{role}.json"
    entries = SimpleEnvelope.from_bytes(fetch(name)).get_signed().targets
    assert entries["devices/watcher-1"].hashes["sha256"] == release["sha256"]
    assert second.director_version == snapshot.meta[role + ".json"].version
    status, _, body = server.request("GET", f"/v1/repository/director/{name}", token=token)
    assert status == 200 and body == fetch(name)


def test_a_device_reads_only_its_own_director_bin(server: RunningServer, release: dict) -> None:
    token = server.enroll("bin-reader-1", group="bin-readers")
    own = device_bin("bin-reader-1")
    other = next(f"bin-{i:02x}" for i in range(256) if f"bin-{i:02x}" != own)
    with pytest.raises(grpc.RpcError) as refused:
        server.stub().FetchMetadata(pb.MetadataRequest(repository=pb.REPOSITORY_DIRECTOR, name=f"1.{other}.json"),
                                    metadata=auth(token), timeout=10)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND and "reads only its own" in refused.value.details()
    status, _, _ = server.request("GET", f"/v1/repository/director/1.{other}.json", token=token)
    assert status == 404
    assert server.stub().FetchMetadata(pb.MetadataRequest(repository=pb.REPOSITORY_DIRECTOR, name=f"1.{own}.json"),
                                       metadata=auth(token), timeout=10).data


def test_a_device_enrolling_after_a_group_deployment_is_told_of_it_at_once(
    server: RunningServer, release: dict
) -> None:
    server.enroll("latecomer-1", group="latecomers")
    status, doc = server.json("POST", "/v1/deployments", {"model": "grpc-model", "target": "group:latecomers"})
    assert status == 201, doc
    token = server.enroll("latecomer-2", group="latecomers")
    stream = server.stub().WatchAssignments(pb.WatchRequest(device_id="latecomer-2"), metadata=auth(token), timeout=30)
    notices: queue.Queue[pb.AssignmentNotice] = queue.Queue()
    threading.Thread(target=_collect, args=(stream, notices), daemon=True).start()
    assert notices.get(timeout=10).deployment_id == doc["id"]
    stream.cancel()
    status, rows = server.json("GET", f"/v1/deployments/{doc['id']}/devices")
    assert {d["device_id"] for d in rows["devices"]} == {"latecomer-1", "latecomer-2"} and rows["next"] is None


def test_fetch_metadata_returns_signed_bytes_and_not_found_for_unknown_names(server: RunningServer) -> None:
    token = server.enroll("meta-1")
    stub = server.stub()
    data = stub.FetchMetadata(pb.MetadataRequest(repository=pb.REPOSITORY_IMAGE, name="1.root.json"),
                              metadata=auth(token), timeout=10).data
    assert SimpleEnvelope.from_bytes(data).get_signed().type == "root"
    assert stub.FetchMetadata(pb.MetadataRequest(repository=pb.REPOSITORY_DIRECTOR, name="timestamp.json"),
                              metadata=auth(token), timeout=10).data
    with pytest.raises(grpc.RpcError) as e:
        stub.FetchMetadata(pb.MetadataRequest(repository=pb.REPOSITORY_IMAGE, name="../../etc/passwd"),
                           metadata=auth(token), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def _fetched(stub, token: str, repository: int, name: str) -> bytes:  # noqa: ANN001
    return stub.FetchMetadata(pb.MetadataRequest(repository=repository, name=name), metadata=auth(token),
                              timeout=10).data


def test_a_bundle_holds_the_bytes_fetch_metadata_serves_and_only_what_is_newer(
        server: RunningServer, release: dict) -> None:
    token = server.enroll("bundler-1", group="bundlers")
    status, doc = server.json("POST", "/v1/deployments", {"model": "grpc-model", "target": "group:bundlers"})
    assert status == 201, doc
    wait_for(lambda: (server.json("GET", "/v1/devices/bundler-1")[1].get("assignment") or None),
             timeout_s=30, what="the device's assignment to be signed")
    stub = server.stub()
    first = stub.FetchMetadataBundle(pb.BundleRequest(), metadata=auth(token), timeout=10)
    files = {(f.repository, f.name): f.data for f in first.files}
    role = device_bin("bundler-1")

    for (repository, name), data in files.items():
        assert data == _fetched(stub, token, repository, name), name
    for repository in (pb.REPOSITORY_IMAGE, pb.REPOSITORY_DIRECTOR):
        assert {n.split(".", 1)[1] for r, n in files if r == repository} >= {"json", "snapshot.json", "targets.json"}
    bins = [n for r, n in files if r == pb.REPOSITORY_DIRECTOR and ".bin-" in n]
    snapshot = SimpleEnvelope.from_bytes(_fetched(stub, token, pb.REPOSITORY_DIRECTOR, "snapshot.json")).get_signed()
    assert bins == [f"{snapshot.meta[role + '.json'].version}.{role}.json"]      # its own bin, no other
    assert {s.repository: s.root for s in first.states} == {pb.REPOSITORY_IMAGE: 1, pb.REPOSITORY_DIRECTOR: 1}

    def version(repository: int, name: str) -> int:
        return SimpleEnvelope.from_bytes(files[(repository, name)]).get_signed().version
    trusted = []
    for repository in (pb.REPOSITORY_IMAGE, pb.REPOSITORY_DIRECTOR):
        names = {n.split(".")[-2]: n for r, n in files if r == repository}
        trusted.append(pb.TrustedVersions(
            repository=repository, root=1, timestamp=version(repository, "timestamp.json"),
            snapshot=version(repository, names["snapshot"]), targets=version(repository, names["targets"]),
            bin=version(repository, bins[0]) if repository == pb.REPOSITORY_DIRECTOR else 0))
    again = stub.FetchMetadataBundle(pb.BundleRequest(trusted=trusted), metadata=auth(token), timeout=10)
    assert sorted(f.name for f in again.files) == ["timestamp.json", "timestamp.json"]   # nothing else is newer


def test_bundle_requests_are_checked_and_authenticated(server: RunningServer) -> None:
    token = server.enroll("bundler-2")
    stub = server.stub()
    bad = {
        "twice": [pb.TrustedVersions(repository=pb.REPOSITORY_IMAGE)] * 2,
        "unknown": [pb.TrustedVersions(repository=pb.REPOSITORY_UNSPECIFIED)],
        "range": [pb.TrustedVersions(repository=pb.REPOSITORY_IMAGE, snapshot=2**50)],
    }
    for why, trusted in bad.items():
        with pytest.raises(grpc.RpcError) as e:
            stub.FetchMetadataBundle(pb.BundleRequest(trusted=trusted), metadata=auth(token), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, why
    for trusted in ([], bad["twice"]):       # a stranger is refused before its request is looked at
        with pytest.raises(grpc.RpcError) as e:
            stub.FetchMetadataBundle(pb.BundleRequest(trusted=trusted), metadata=auth("forged"), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_download_from_an_offset_returns_exactly_the_remaining_bytes(server: RunningServer, release: dict) -> None:
    token = server.enroll("downloader-1")
    stub = server.stub()
    whole = (server.data / "blobs" / "sha256" / release["sha256"][:2] / release["sha256"]).read_bytes()
    offset = len(whole) // 3
    chunks = list(stub.Download(pb.DownloadRequest(sha256=release["sha256"], offset=offset),
                                metadata=auth(token), timeout=10))
    assert chunks[0].offset == offset
    assert b"".join(c.data for c in chunks) == whole[offset:]
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Download(pb.DownloadRequest(sha256=release["sha256"], offset=len(whole) + 1),
                           metadata=auth(token), timeout=10))
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Download(pb.DownloadRequest(sha256="ab" * 32), metadata=auth(token), timeout=10))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_http_artifact_download_honours_ranges(server: RunningServer, release: dict) -> None:
    token = server.enroll("ranger-1")
    path = f"/v1/artifacts/{release['sha256']}"
    status, _, whole = server.request("GET", path, token=token)
    assert status == 200 and len(whole) == release["length"]
    status, headers, part = server.request("GET", path, token=token, headers={"Range": "bytes=100-"})
    assert status == 206 and part == whole[100:]
    assert headers["Content-Range"] == f"bytes 100-{len(whole) - 1}/{len(whole)}"
    status, _, _ = server.request("GET", path, token=token, headers={"Range": f"bytes={len(whole) + 10}-"})
    assert status == 416
    assert server.request("GET", path, token=server.operator_token)[0] == 401


def _batch(batch_id: str, device_id: str) -> pb.TelemetryBatch:
    counts = buckets.empty()
    counts[4] = 3
    return pb.TelemetryBatch(batch_id=batch_id, device_id=device_id, stats=[pb.ModelStats(
        model="grpc-model", version="1", variant="original", backend="onnxruntime", inferences=3,
        latency=pb.LatencyHistogram(counts=counts), latency_sum_ms=1.5)])


def test_telemetry_is_acked_once_stored_and_a_resent_batch_is_a_duplicate(server: RunningServer) -> None:
    token = server.enroll("telemetry-1")
    acks = list(server.stub().StreamTelemetry(
        iter([_batch("b1", "telemetry-1"), _batch("b2", "telemetry-1"), _batch("b1", "telemetry-1")]),
        metadata=auth(token), timeout=10))
    assert [(a.batch_id, a.duplicate) for a in acks] == [("b1", False), ("b2", False), ("b1", True)]
    status, device = server.json("GET", "/v1/devices/telemetry-1")
    assert status == 200
    [summary] = device["telemetry"]
    # All six fell in bucket 4: the median is interpolated halfway through it.
    low, high = buckets.LATENCY_BOUNDS_MS[3], buckets.LATENCY_BOUNDS_MS[4]
    assert summary["inferences"] == 6 and summary["p50_ms"] == pytest.approx((low + high) / 2)


def test_status_reports_drive_the_deployment_document(server: RunningServer) -> None:
    token = server.enroll("reporter-1", group="reporters")
    status, dep = server.json("POST", "/v1/deployments", {"model": "grpc-model", "target": "group:reporters"})
    assert status == 201
    # The deploy call returns before the device's director is signed; it is told once it is.
    wait_for(lambda: (server.json("GET", "/v1/devices/reporter-1")[1].get("assignment") or None),
             timeout_s=30, what="the device's assignment to be signed")
    server.stub().ReportStatus(pb.StatusReport(deployment_id=dep["id"], state="idle", event="success",
                                               active_model="grpc-model@1", final=True, outcome="installed"),
                               metadata=auth(token), timeout=10)
    status, doc = server.json("GET", f"/v1/deployments/{dep['id']}")
    status, rows = server.json("GET", f"/v1/deployments/{dep['id']}/devices")
    assert doc["status"] == "succeeded" and rows["devices"][0]["outcome"] == "installed"
    status, device = server.json("GET", "/v1/devices/reporter-1")
    assert device["active_model"] == "grpc-model@1" and device["assignment"]["deployment_id"] == dep["id"]


def test_status_reports_in_one_call_are_applied_in_order_and_checked_first(server: RunningServer) -> None:
    token = server.enroll("reporter-2", group="batch-reporters")
    status, dep = server.json("POST", "/v1/deployments", {"model": "grpc-model", "target": "group:batch-reporters"})
    assert status == 201
    wait_for(lambda: (server.json("GET", "/v1/devices/reporter-2")[1].get("assignment") or None),
             timeout_s=30, what="the device's assignment to be signed")
    stub = server.stub()

    def step(state: str, **kw: object) -> pb.StatusReport:
        return pb.StatusReport(deployment_id=dep["id"], state=state, event="success", **kw)
    with pytest.raises(grpc.RpcError) as bad:      # the second is malformed: the first is not applied either
        stub.ReportStatuses(pb.StatusReports(reports=[step("download"), step("idle", final=True, outcome="odd")]),
                            metadata=auth(token), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.json("GET", f"/v1/deployments/{dep['id']}/devices")[1]["devices"][0]["state"] != "download"
    with pytest.raises(grpc.RpcError) as many:
        stub.ReportStatuses(pb.StatusReports(reports=[step("download")] * 65), metadata=auth(token), timeout=10)
    assert many.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    stub.ReportStatuses(pb.StatusReports(reports=[step("download"), step("verify")]), metadata=auth(token), timeout=10)
    assert server.json("GET", f"/v1/deployments/{dep['id']}/devices")[1]["devices"][0]["state"] == "verify"
    stub.ReportStatuses(pb.StatusReports(reports=[
        step("install"), step("idle", active_model="grpc-model@1", final=True, outcome="installed")]),
        metadata=auth(token), timeout=10)
    doc = server.json("GET", f"/v1/deployments/{dep['id']}")[1]
    rows = server.json("GET", f"/v1/deployments/{dep['id']}/devices")[1]["devices"]
    assert doc["status"] == "succeeded" and rows[0]["outcome"] == "installed"
