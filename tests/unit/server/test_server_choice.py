"""Variant choice: loadable by the device's back ends, within budget, fastest as measured."""

from __future__ import annotations

from fleetcast.server import choice
from fleetcast.server.store import Aggregate, Device, ModelVersion, Variant


def _variant(name: str, fmt: str = "onnx", **metrics: object) -> Variant:
    return Variant(variant=name, format=fmt, sha256=name[0] * 64, length=1, metrics=metrics)


RELEASE = ModelVersion(model="m", version="1", created_at=0.0, inputs={}, outputs={}, golden=None, variants=(
    _variant("original"),
    _variant("balanced", latency_ratio=1.4, within_budget=True),      # slower than the original here
    _variant("lossless", latency_ratio=0.8, within_budget=True),
    _variant("fastest", latency_ratio=0.3, within_budget=False),      # fast but over the accuracy budget
    _variant("mnn", "mnn", backend="mnn", latency_ratio=0.5, within_budget=True),
    _variant("openvino", "openvino", backend="openvino", latency_ratio=2.0, within_budget=True),
))


def _device(device_id: str = "d1", hardware: str = "x86-cpu", backends: tuple[str, ...] = ("onnxruntime",),
            group: str = "") -> Device:
    return Device(device_id=device_id, token_sha256="0" * 64, hardware_class=hardware, backends=backends,
                  group=group, labels={}, agent_version="", enrolled_at=0.0)


def test_x86_gets_the_fastest_build_measured_variant_within_budget_not_a_fixed_name() -> None:
    picked = choice.choose(_device(), RELEASE, {})
    assert picked.variant.variant == "lossless"         # not "balanced", measured slower than the original
    assert "build machine" in picked.why


def test_only_variants_the_device_back_ends_load_are_candidates() -> None:
    assert choice.choose(_device(backends=("mnn",)), RELEASE, {}).variant.variant == "mnn"
    # onnxruntime's figures for the ONNX variants say nothing about OpenVINO: its own build wins.
    assert choice.choose(_device(backends=("openvino",)), RELEASE, {}).variant.variant == "openvino"
    both = choice.choose(_device(backends=("onnxruntime", "mnn")), RELEASE, {})
    assert both.variant.variant == "mnn"


def test_class_measurements_from_telemetry_override_the_build_machine_figures() -> None:
    devices = {"d1": _device("d1"), "d2": _device("d2"), "j1": _device("j1", "jetson")}
    aggregates = [
        Aggregate("d1", "m", "1", "original", 100, 0, 100 * 2.0, ()),
        Aggregate("d2", "m", "1", "lossless", 100, 0, 100 * 3.0, ()),   # slower on these devices
        Aggregate("j1", "m", "1", "lossless", 100, 0, 100 * 0.1, ()),   # another class: ignored
    ]
    measured = choice.class_latency(aggregates, devices, model="m", version="1", hardware_class="x86-cpu")
    assert measured == {"original": 2.0, "lossless": 3.0}
    picked = choice.choose(_device(), RELEASE, measured)
    assert picked.variant.variant == "original" and "measured" in picked.why


def test_a_class_unlike_the_build_machine_falls_back_to_its_preference_order_and_says_so() -> None:
    picked = choice.choose(_device(hardware="jetson"), RELEASE, {})
    assert picked.variant.variant == "lossless" and "preference order" in picked.why


def test_operator_pins_win_for_their_group_or_hardware_class_when_loadable() -> None:
    pins = {"group:lab": "balanced", "hardware:x86-cpu": "original", "hardware:rk3399": "mnn"}
    assert choice.choose(_device(group="lab"), RELEASE, {}, pins=pins).variant.variant == "balanced"
    pinned = choice.choose(_device(), RELEASE, {}, pins=pins)
    assert pinned.variant.variant == "original" and "pinned" in pinned.why
    # a pin the device cannot load is not followed
    assert choice.choose(_device(hardware="rk3399"), RELEASE, {}, pins=pins).variant.variant != "mnn"
