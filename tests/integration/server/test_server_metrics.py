"""`GET /metrics` of a real server with a seeded fleet, read back with prometheus_client's parser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from fleetcast.proto import telemetry as buckets
from fleetcast.proto.v1 import device_pb2 as pb
from tests.integration.server.conftest import RunningServer, auth, launch
from tests.support import models

FLEET = {"m-x86-1": "x86-cpu", "m-x86-2": "x86-cpu", "m-rk-1": "rk3399", "m-jet-1": "jetson"}
SAMPLES_PER_DEVICE = 400


def _enroll(running: RunningServer, device_id: str, hardware: str) -> str:
    reply = running.stub().Enroll(pb.EnrollRequest(device_id=device_id, hardware_class=hardware,
                                                   backends=["onnxruntime"], enroll_token=running.enroll_token,
                                                   group="metrics"), timeout=10)
    return reply.device_token


def _send(running: RunningServer, device_id: str, token: str, latencies_ms: np.ndarray, errors: int) -> None:
    counts = buckets.empty()
    for x in latencies_ms:
        counts[buckets.bucket_of(float(x))] += 1
    batch = pb.TelemetryBatch(batch_id=f"{device_id}-1", device_id=device_id, stats=[pb.ModelStats(
        model="metrics-model", version="1", variant="original", backend="onnxruntime",
        inferences=len(latencies_ms), errors=errors, latency=pb.LatencyHistogram(counts=counts),
        latency_sum_ms=float(latencies_ms.sum()))])
    [ack] = list(running.stub().StreamTelemetry(iter([batch]), metadata=auth(token), timeout=10))
    assert not ack.duplicate


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory):
    rng = np.random.default_rng(11)
    raw: dict[str, np.ndarray] = {}
    tokens: dict[str, str] = {}
    with launch(tmp_path_factory.mktemp("metrics")) as running:
        for i, (device_id, hardware) in enumerate(FLEET.items()):
            token = tokens[device_id] = _enroll(running, device_id, hardware)
            # Each hardware class is slower than the last: the fleet-wide p95 is not any device's.
            raw[device_id] = rng.lognormal(mean=np.log(2.0 * (i + 1)), sigma=0.6, size=SAMPLES_PER_DEVICE)
            _send(running, device_id, token, raw[device_id], errors=i)
        status, _ = running.upload("metrics-model", {"model": models.to_bytes(models.tiny_classifier(seed=3))})
        assert status == 201
        status, dep = running.json("POST", "/v1/deployments", {"model": "metrics-model", "target": "group:metrics"})
        assert status == 201, dep
        # One device has installed it and serves it; the other three are still pending.
        running.stub().ReportStatus(pb.StatusReport(
            deployment_id=dep["id"], state="commit", event="success", model="metrics-model", version="1",
            active_model="metrics-model@1", final=True, outcome="installed"), metadata=auth(tokens["m-x86-1"]),
            timeout=10)
        yield running, raw, dep


def _scrape(running: RunningServer, token: str | None) -> tuple[int, dict[str, str], str]:
    status, headers, body = running.request("GET", "/metrics", token=token)
    return status, headers, body.decode()


def _families(text: str) -> dict[str, list[Sample]]:
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def test_metrics_need_the_metrics_or_operator_token(seeded) -> None:
    running, _, _ = seeded
    assert _scrape(running, None)[0] == 401
    assert _scrape(running, "wrong")[0] == 401
    metrics_token = (running.data / "metrics-token").read_text().strip()
    status, headers, _ = _scrape(running, metrics_token)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert _scrape(running, "operator")[0] == 200
    assert (running.data / "metrics-token").stat().st_mode & 0o777 == 0o600


def test_metric_names_follow_the_prometheus_conventions_and_no_device_id_is_a_label(seeded) -> None:
    running, _, _ = seeded
    text = _scrape(running, "operator")[2]
    families = list(text_string_to_metric_families(text))
    ours = [f for f in families if f.name.startswith("fleetcast_")]
    assert {f.name for f in ours} >= {
        "fleetcast_devices", "fleetcast_devices_serving", "fleetcast_deployments", "fleetcast_deployment_devices",
        "fleetcast_inference_duration_seconds", "fleetcast_inferences", "fleetcast_inference_errors",
        "fleetcast_http_requests", "fleetcast_http_request_duration_seconds"}
    for f in ours:
        assert re.fullmatch(r"fleetcast_[a-z_]+", f.name), f.name
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples), f.name
        if f.type == "histogram":
            assert f.name.endswith("_seconds"), f"{f.name}: durations are in seconds"
        for s in f.samples:
            assert "device_id" not in s.labels and "device" not in s.labels
            assert not set(s.labels.values()) & set(FLEET), f"a device id became a label value: {s}"
    assert any(f.name == "process_cpu_seconds" for f in families), "process metrics missing"


def test_fleet_gauges_count_devices_by_state_hardware_and_deployment_progress(seeded) -> None:
    running, _, dep = seeded
    f = _families(_scrape(running, "operator")[2])
    by_class: dict[str, float] = {}
    for s in f["fleetcast_devices"]:
        by_class[s.labels["hardware_class"]] = by_class.get(s.labels["hardware_class"], 0) + s.value
        assert s.labels["state"] in {"online", "late", "offline"}
    assert by_class == {"x86-cpu": 2, "rk3399": 1, "jetson": 1}
    online = sum(s.value for s in f["fleetcast_devices"] if s.labels["state"] == "online")
    assert online == len(FLEET)  # all sent telemetry just now
    progress = {s.labels["outcome"]: s.value for s in f["fleetcast_deployment_devices"]
                if s.labels["deployment_id"] == dep["id"]}
    assert progress == {"pending": len(FLEET) - 1, "installed": 1}
    serving = {(s.labels["model"], s.labels["version"]): s.value for s in f["fleetcast_devices_serving"]}
    assert serving == {("metrics-model", "1"): 1}
    assert {s.labels["status"]: s.value for s in f["fleetcast_deployments"]} == {"active": 1}


def _cumulative(samples: list[Sample], **match: str) -> list[tuple[float, float]]:
    """Merges `_bucket` samples over every label not in `match`: (le, cumulative count), by le."""
    merged: dict[float, float] = {}
    for s in samples:
        if s.name.endswith("_bucket") and all(s.labels.get(k) == v for k, v in match.items()):
            le = float(s.labels["le"])
            merged[le] = merged.get(le, 0.0) + s.value
    return sorted(merged.items())


def _histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """PromQL's histogram_quantile over cumulative (le, count) pairs."""
    total = cumulative[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    raise AssertionError("unreachable")


def test_fleet_p95_from_merged_buckets_matches_the_raw_samples_within_one_bucket(seeded) -> None:
    running, raw, _ = seeded
    f = _families(_scrape(running, "operator")[2])
    duration = f["fleetcast_inference_duration_seconds"]
    assert {s.labels["hardware_class"] for s in duration} == set(FLEET.values())
    assert {s.labels["backend"] for s in duration} == {"onnxruntime"}   # the back end the devices reported
    cumulative = _cumulative(duration, model="metrics-model", version="1")
    everything = np.concatenate(list(raw.values()))
    assert cumulative[-1][1] == len(everything)

    p95_s = _histogram_quantile(0.95, cumulative)
    raw_p95_ms = float(np.quantile(everything, 0.95, method="inverted_cdf"))
    i = buckets.bucket_of(raw_p95_ms)
    low, high = (buckets.LATENCY_BOUNDS_MS[i - 1] if i else 0.0), buckets.LATENCY_BOUNDS_MS[i]
    assert low <= p95_s * 1000 <= high, (p95_s * 1000, raw_p95_ms, low, high)

    counts = {s.labels["hardware_class"]: s.value for s in f["fleetcast_inferences"]}
    assert counts == {"x86-cpu": 2 * SAMPLES_PER_DEVICE, "rk3399": SAMPLES_PER_DEVICE, "jetson": SAMPLES_PER_DEVICE}
    assert sum(s.value for s in f["fleetcast_inference_errors"]) == sum(range(len(FLEET)))
    sums = sum(s.value for s in duration if s.name.endswith("_sum"))
    assert sums == pytest.approx(everything.sum() / 1000)


def test_http_requests_are_counted_by_route_template_not_by_path(seeded) -> None:
    running, _, _ = seeded
    for device_id in FLEET:
        assert running.json("GET", f"/v1/devices/{device_id}")[0] == 200
    f = _families(_scrape(running, "operator")[2])
    routes = {s.labels["route"] for s in f["fleetcast_http_requests"]}
    assert "/v1/devices/{id}" in routes and not routes & {f"/v1/devices/{d}" for d in FLEET}
    hits = sum(s.value for s in f["fleetcast_http_requests"]
               if s.labels["route"] == "/v1/devices/{id}" and s.labels["status"] == "200")
    assert hits >= len(FLEET)


DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "fleetcast-fleet.json"
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "le", "label_values"}


def test_the_grafana_dashboard_queries_only_series_the_server_exports(seeded) -> None:
    running, _, _ = seeded
    exported = {s.name for samples in _families(_scrape(running, "operator")[2]).values() for s in samples}
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in doc["templating"]["list"] if v.get("definition")]
    assert len(exprs) >= 10
    used = set()
    for expr in exprs:
        without_labels = re.sub(r"\{[^}]*\}|\[[^]]*\]|\"[^\"]*\"", "", expr)
        without_grouping = re.sub(r"by \([^)]*\)", "", without_labels)
        used |= {w for w in re.findall(r"[a-z_][a-z0-9_]*", without_grouping) if w not in PROMQL_WORDS}
        used -= {"model", "version", "hardware_class"}  # label_values(..., label)
    assert used, exprs
    assert used <= exported, f"the dashboard queries series the server does not export: {sorted(used - exported)}"
    assert not any("device_id" in e for e in exprs)
