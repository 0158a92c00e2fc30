"""Delivery over the default path: gRPC push, no broker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.support import models
from tests.support.deployments import deploy_and_install, infer_output, push, show, wait_serving
from tests.support.processes import Fleet, ServerProcess

pytestmark = pytest.mark.e2e

HARDWARE = {"dev-x86": "x86-cpu", "dev-arm": "arm-cpu", "dev-jetson": "jetson"}


def expected_output(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_deploy_over_grpc_push_installs_and_serves_new_version_on_every_hardware_class(
    new_server, tmp_path: Path
) -> None:
    server: ServerProcess = new_server()
    old = models.write(models.tiny_classifier(1), tmp_path / "v1.onnx")
    new = models.write(models.tiny_classifier(2), tmp_path / "v2.onnx")
    with Fleet(tmp_path / "agents", server, HARDWARE.items()) as fleet:
        v1 = push(server, old, name="classifier").version
        deploy_and_install(server, fleet.agents, "classifier", v1)
        v2 = push(server, new, name="classifier").version
        assert v2 != v1
        deploy_and_install(server, fleet.agents, "classifier", v2)

        x = models.sample_input(rows=3)
        want = expected_output(new, x)
        for agent in fleet:
            wait_serving(agent, "classifier", v2)
            assert models.sha256_of(agent.active_model_path()) == models.sha256_of(new), agent.log_tail()
            got = infer_output(agent, x)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=agent.device_id)

        with server.client() as fc:
            devices = {d.id: d for d in fc.list_devices()}
        for device_id, hardware in HARDWARE.items():
            assert device_id in devices, f"{device_id} missing from the device list: {show(list(devices))}"
            d = devices[device_id]
            assert (d.hardware_class, d.active_model, d.active_version) == (hardware, "classifier", v2), show(d.raw)
