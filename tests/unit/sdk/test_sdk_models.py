"""Typed results read the server's documents, and keep them whole in `raw`."""

from __future__ import annotations

from fleetcast.sdk import Deployment, Device, ModelVersion


def test_a_device_document_as_the_server_writes_it() -> None:
    doc = {"id": "cam-1", "hardware_class": "rk3399", "backends": ["onnxruntime"], "group": "lab",
           "last_seen": 1.0, "active_model": "digits@3", "state": "serving",
           "telemetry": [
               {"model": "digits", "version": "2", "inferences": 50, "errors": 0, "p50_ms": 9.0, "p95_ms": 9.0},
               {"model": "digits", "version": "3", "inferences": 5, "errors": 1, "p50_ms": 1.0, "p95_ms": 2.0},
           ]}

    device = Device.from_json(doc)

    assert (device.active_model, device.active_version) == ("digits", "3")
    assert device.active_stats is not None and device.active_stats.p95_ms == 2.0  # the active one, not the busiest
    assert (device.inferences, device.errors) == (5, 1)  # the active version's counts, not a sum over versions
    assert device.raw is doc


def test_a_device_shows_no_figures_until_its_active_version_reports() -> None:
    doc = {"id": "cam-1", "active_model": "digits@4", "liveness": {"state": "late"},
           "telemetry": [{"model": "digits", "version": "3", "inferences": 50, "errors": 2, "p95_ms": 9.0}]}

    device = Device.from_json(doc)

    assert device.active_stats is None and device.inferences is None and device.errors is None
    assert device.liveness == "late"


def test_the_servers_serving_figures_win_over_per_variant_rows() -> None:
    doc = {"id": "cam-1", "active_model": "digits@3",
           "serving": {"model": "digits", "version": "3", "inferences": 7, "errors": 0, "p95_ms": 1.5},
           "telemetry": [{"model": "digits", "version": "3", "variant": "int8", "inferences": 4, "p95_ms": 1.0},
                         {"model": "digits", "version": "3", "variant": "fp16", "inferences": 3, "p95_ms": 2.0}]}

    device = Device.from_json(doc)

    assert device.active_stats is not None and device.active_stats.p95_ms == 1.5 and device.inferences == 7


def test_a_device_that_serves_nothing_yet() -> None:
    device = Device.from_json({"id": "cam-2", "active_model": None, "telemetry": []})

    assert device.active_model is None and device.active_stats is None and device.backends == ()


def test_a_deployment_is_finished_when_every_device_has_an_outcome() -> None:
    doc = {"id": "7", "model": "digits", "version": "1", "target": "all", "status": "active",
           "devices": [{"device_id": "a", "state": "committed", "outcome": "installed"},
                       {"device_id": "b", "state": "downloading", "outcome": None}]}
    assert not Deployment.from_json(doc).finished

    doc["devices"][1].update(outcome="rolled_back", reason="smoke test failed")
    done = Deployment.from_json(doc)

    assert done.finished
    assert [d.device_id for d in done.failed_devices] == ["b"]


def test_a_cancelled_deployment_is_finished_even_with_devices_pending() -> None:
    doc = {"id": "8", "model": "digits", "status": "cancelled",
           "devices": [{"device_id": "a", "outcome": None}]}
    assert Deployment.from_json(doc).finished


def test_a_version_finds_its_variants_by_name() -> None:
    version = ModelVersion.from_json({
        "name": "digits", "version": 1, "created_at": 1.0,
        "variants": [{"variant": "original", "format": "onnx", "sha256": "ab", "length": 3, "metrics": {}}],
    })

    assert version.version == "1"  # always text, even if a server sends a number
    assert version.variant("original") is not None and version.variant("int8") is None
