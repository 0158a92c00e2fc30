"""The back-end probes and the onnxruntime provider check, on this machine's real packages."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from fleetcast.agent import backends
from fleetcast.agent.backends import litert, onnxruntime as ort_backend
from fleetcast.agent.errors import IncompatibleModelError
from fleetcast.proto import formats, ovir
from tests.support import tflite_models


def test_litert_probe_model_is_exactly_what_the_builder_makes() -> None:
    assert litert.tiny_model() == tflite_models.relu()
    assert base64.b64encode(tflite_models.relu()).decode() == "".join(litert.PROBE_MODEL_B64)


@pytest.mark.parametrize("name", ["onnxruntime", "litert", "openvino", "mnn"])
def test_every_backend_installed_here_loads_its_probe_model_on_the_cpu(name: str) -> None:
    probe = backends.probe(name, "x86-cpu")
    assert probe.available, probe.detail
    assert probe.version and probe.accelerator == "cpu"


def test_rknn_is_reported_unavailable_off_a_rockchip_board_with_the_reason() -> None:
    probe = backends.probe("rknn", "rk3399")
    assert not probe.available and ("aarch64" in probe.detail or "driver" in probe.detail or "installed" in probe.detail)


def test_openvino_on_movidius_without_a_myriad_plugin_is_unavailable_not_cpu() -> None:
    probe = backends.probe("openvino", "movidius")
    assert not probe.available and "MYRIAD" in probe.detail


def test_jetson_without_a_gpu_build_reports_the_cpu_fallback_it_really_got() -> None:
    probe = backends.probe("onnxruntime", "jetson")
    session = backends.backend("onnxruntime").load(ort_backend.tiny_model(), threads=1, hardware_class="jetson")
    assert session.providers[0] == "CPUExecutionProvider"      # what get_providers() says, after creation
    assert probe.accelerator == "cpu" and "CUDAExecutionProvider" in probe.detail
    assert session.fallback == probe.detail


def test_fallback_reason_names_a_provider_that_was_present_but_did_not_start() -> None:
    present = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    reason = ort_backend.fallback_reason("jetson", present, ["CPUExecutionProvider"])
    assert "did not start" in reason and "CPUExecutionProvider" in reason
    assert ort_backend.fallback_reason("jetson", present, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ""
    assert ort_backend.fallback_reason("x86-cpu", ["CPUExecutionProvider"], ["CPUExecutionProvider"]) == ""


def test_choose_follows_the_format_registry_and_names_what_is_missing() -> None:
    assert backends.choose("tflite", "phone-android").name == "litert"
    assert backends.choose("fcpack", "x86-cpu").name == "onnxruntime"
    backends.configure(["mnn"])
    try:
        with pytest.raises(IncompatibleModelError, match="needs onnxruntime or openvino.*none enabled"):
            backends.choose("onnx", "x86-cpu")
    finally:
        backends.configure(None)


def test_litert_session_matches_a_bare_interpreter_on_the_conv_net() -> None:
    from ai_edge_litert.interpreter import Interpreter

    data = tflite_models.conv_net()
    session = backends.backend("litert").load(data, threads=1, hardware_class="phone-android")
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    bare = Interpreter(model_content=data)
    bare.allocate_tensors()
    bare.set_tensor(bare.get_input_details()[0]["index"], x)
    bare.invoke()
    np.testing.assert_array_equal(session.run({"input": x})["logits"],
                                  bare.get_tensor(bare.get_output_details()[0]["index"]))


def test_ovir_split_refuses_lengths_past_the_data() -> None:
    data = ovir.join(b"<xml/>", b"weights")
    assert ovir.split(data) == (b"<xml/>", b"weights")
    with pytest.raises(ovir.IrError, match="more than"):
        ovir.split(data[:12] + (10**9).to_bytes(8, "little")[:4] + data[16:])
    with pytest.raises(ovir.IrError, match="magic"):
        ovir.split(b"x" * 32)


def test_sniff_finds_tflite_by_its_identifier_and_defaults_to_onnx() -> None:
    assert formats.sniff(tflite_models.relu()[:16]) == "tflite"
    assert formats.sniff(b"\x08\x08\x12\x0f") == "onnx"
    assert formats.loadable_by("mnn", ("mnn",)) and not formats.loadable_by("mnn", ("onnxruntime",))
