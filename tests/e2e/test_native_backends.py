"""Native back ends end to end: a .tflite model served by LiteRT on a phone-android
agent, and one ONNX upload delivered as MNN and as OpenVINO builds to agents that
report only those back ends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter

from tests.support import models, tflite_models
from tests.support.deployments import deploy_and_install, show, wait_serving
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

# A float32 conversion (MNN, OpenVINO IR at f32) must stay this close to onnxruntime
# (documented in docs/benchmarks.md and fleetcast.server.convert.build.TOLERANCE).
ATOL, RTOL = 1e-3, 1e-3


def test_tflite_model_is_pushed_deployed_and_served_by_litert_like_a_bare_interpreter(
    new_server, new_agent, tmp_path: Path
) -> None:
    model = tmp_path / "mlp.tflite"
    model.write_bytes(tflite_models.mlp())
    server = new_server()
    with server.client() as fc:
        pushed = fc.push_model(model, name="mlp-tflite")
    assert [(v.variant, v.format) for v in pushed.variants] == [("original", "tflite")], show(pushed.raw)
    phone = new_agent(server, "phone-1", hardware="phone-android", extra_args=["--backends", "litert"])
    deploy_and_install(server, [phone], "mlp-tflite", pushed.version)
    wait_serving(phone, "mlp-tflite", pushed.version)
    assert (phone.active_manifest() or {}).get("format") == "tflite"

    x = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
    served = phone.infer({"input": x})["logits"]
    bare = Interpreter(model_path=str(model))
    bare.allocate_tensors()
    bare.set_tensor(bare.get_input_details()[0]["index"], x)
    bare.invoke()
    np.testing.assert_array_equal(served, bare.get_tensor(bare.get_output_details()[0]["index"]))
    with server.client() as fc:
        device = fc.get_device("phone-1").raw
    assert device["backends"] == ["litert"], show(device)
    assert device["labels"]["backend.litert"].endswith("on cpu"), show(device)
    assert device["assignment"]["variant"] == "original" and device["assignment"]["why"], show(device)


def test_a_tflite_upload_that_litert_cannot_load_is_refused_with_a_clear_error(new_server, tmp_path: Path) -> None:
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(tflite_models.mlp()[:400])    # the identifier survives, the flatbuffer does not
    server = new_server()
    with server.client() as fc:
        with pytest.raises(Exception) as refused:
            fc.push_model(broken, name="broken")
    assert "LiteRT" in str(refused.value) and "Traceback" not in str(refused.value)


def test_onnx_upload_is_delivered_as_mnn_and_openvino_builds_within_tolerance_of_onnxruntime(
    new_server, new_agent, tmp_path: Path
) -> None:
    source = models.write(models.tiny_classifier(7, n_in=16, n_out=4), tmp_path / "tiny.onnx")
    server = new_server()
    with server.client() as fc:
        pushed = fc.push_model(source, name="tiny", targets=("mnn", "openvino"))
        version = fc.wait_compression("tiny", pushed.version, timeout_s=120, poll_s=0.3)
    doc = version.raw
    variants = {v.variant: v for v in version.variants}
    assert {(n, variants[n].format) for n in ("mnn", "openvino")} <= {(v.variant, v.format) for v in variants.values()}, \
        show(doc)
    for name in ("mnn", "openvino"):
        m = variants[name].metrics
        assert m["backend"] == name and m["within_budget"] is True and m["latency_ratio"] > 0, show(m)
        assert m["measured_on"] == "build machine"

    agents = {"dev-mnn": "mnn", "dev-openvino": "openvino"}
    started = [new_agent(server, d, extra_args=["--backends", b, "--telemetry-interval-s", "1"])
               for d, b in agents.items()]

    def enrolled() -> bool | None:
        with server.client() as fc:
            return set(agents) <= {d.id for d in fc.list_devices()} or None
    wait_for(enrolled, timeout_s=30, what="both agents to enroll", context=lambda: started[-1].log_tail())
    deploy_and_install(server, started, "tiny", version.version)
    x = models.sample_input(16, rows=3, seed=5)
    options = ort.SessionOptions()
    expected = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    for agent in started:
        wait_serving(agent, "tiny", version.version)
        backend = agents[agent.device_id]
        manifest = agent.active_manifest() or {}
        assert (manifest.get("variant"), manifest.get("format")) == (backend, backend), agent.log_tail()
        got = agent.infer({"input": x})["output"]
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)
        with server.client() as fc:
            device = fc.get_device(agent.device_id).raw
        assert device["backends"] == [backend] and device["assignment"]["variant"] == backend, show(device)
        assert "loadable" in device["assignment"]["why"], show(device)
    with server.client() as fc:
        shown = fc.get_version("tiny", version.version).raw["devices"]
        assert {d["device_id"]: d["variant"] for d in shown} == {"dev-mnn": "mnn", "dev-openvino": "openvino"}
        assert all("build machine" in d["why"] for d in shown), show(shown)

    # Served latency comes back per variant in telemetry; the next choice uses it.
    for _ in range(5):
        started[1].infer({"input": x})
    def reported() -> bool | None:
        with server.client() as fc:
            stats = fc.get_device("dev-openvino").raw["telemetry"]
        return any(s["variant"] == "openvino" and s["inferences"] >= 3 for s in stats) or None
    wait_for(reported, timeout_s=30, what="dev-openvino's telemetry", context=started[1].log_tail)
    deploy_and_install(server, started, "tiny", version.version)
    with server.client() as fc:
        shown = {d["device_id"]: d["why"] for d in fc.get_version("tiny", version.version).raw["devices"]}
        assert "measured" in shown["dev-openvino"] and "x86-cpu devices" in shown["dev-openvino"], show(shown)
        # An operator pin for the hardware class wins where the device can load it, and only there.
        assert fc.pin_variant("tiny", "hardware:x86-cpu", "mnn") == {"hardware:x86-cpu": "mnn"}
    deploy_and_install(server, started, "tiny", version.version)
    with server.client() as fc:
        why = {d["device_id"]: (d["variant"], d["why"]) for d in fc.get_version("tiny", version.version).raw["devices"]}
    assert why["dev-mnn"] == ("mnn", "pinned by the operator for hardware:x86-cpu"), why
    assert why["dev-openvino"][0] == "openvino" and "pinned" not in why["dev-openvino"][1], why
