"""Packages: an fcpack model installs as signed, decodes in memory and serves like its ONNX model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from fleetcast.agent.datadir import DataDir
from fleetcast.agent.errors import ActivationError, IncompatibleModelError
from fleetcast.agent.packages import runnable_format
from fleetcast.agent.runtime import Runtime, load_model, smoke_test
from fleetcast.agent.slots import Slots
from fleetcast.agent.telemetry import Recorder
from fleetcast.agent.trust import VerifiedAssignment
from fleetcast.proto import fcpack
from tests.support import models
from tests.unit.agent.conftest import DEVICE_ID, golden_bytes


def _install_package(data: DataDir, directory: Path, package: bytes, golden: bytes) -> Slots:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "m.fcpack").write_bytes(package)
    (directory / "g.npz").write_bytes(golden)
    sha, gsha = hashlib.sha256(package).hexdigest(), hashlib.sha256(golden).hexdigest()
    assignment = VerifiedAssignment.from_saved({
        "deployment_id": "dep-1", "device_id": DEVICE_ID, "model": "tiny", "version": "1",
        "variant": "smallest", "format": "fcpack", "target_path": f"artifacts/{sha}", "sha256": sha,
        "length": len(package), "director_version": 1,
        "golden": {"path": f"artifacts/{gsha}", "sha256": gsha, "length": len(golden), "atol": 1e-5, "rtol": 1e-4},
        "inputs": {"input": {"dtype": "float32", "shape": ["N", 16]}},
    })
    slots = Slots(data)
    slots.install("a", assignment, model_file=directory / "m.fcpack", golden_file=directory / "g.npz")
    return slots


def test_an_fcpack_slot_loads_and_serves_the_decoded_models_outputs(data: DataDir, tmp_path: Path) -> None:
    onnx_bytes = models.to_bytes(models.tiny_classifier(5))
    package = fcpack.encode(onnx_bytes)
    slots = _install_package(data, tmp_path / "src", package, golden_bytes(onnx_bytes))
    installed = slots.load("a")
    assert installed.model_path.name == "model.fcpack" and installed.model_path.read_bytes() == package
    model = load_model(installed, recorder=Recorder(DEVICE_ID), threads=1, hardware_class="x86-cpu")
    smoke_test(model)
    runtime = Runtime()
    runtime.swap(model)
    x = models.sample_input(rows=5, seed=9)
    expected = onnxruntime.InferenceSession(fcpack.decode(package), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    np.testing.assert_array_equal(runtime.infer({"input": x})["output"], expected)


def test_a_package_that_does_not_decode_is_an_activation_error(data: DataDir, tmp_path: Path) -> None:
    onnx_bytes = models.to_bytes(models.tiny_classifier(5))
    damaged = bytearray(fcpack.encode(onnx_bytes))
    damaged[4] = 99   # an fcpack version this agent does not read
    slots = _install_package(data, tmp_path / "src", bytes(damaged), golden_bytes(onnx_bytes))
    with pytest.raises(ActivationError, match="does not decode"):
        load_model(slots.load("a"), recorder=Recorder(DEVICE_ID), threads=1, hardware_class="x86-cpu")


def test_a_package_decoding_past_the_limit_is_refused(data: DataDir, tmp_path: Path) -> None:
    onnx_bytes = models.to_bytes(models.tiny_classifier(5))
    slots = _install_package(data, tmp_path / "src", fcpack.encode(onnx_bytes), golden_bytes(onnx_bytes))
    with pytest.raises(ActivationError, match="limit"):
        load_model(slots.load("a"), recorder=Recorder(DEVICE_ID), threads=1, hardware_class="x86-cpu",
                   max_model_bytes=len(onnx_bytes) // 2)


def test_unknown_formats_are_incompatible() -> None:
    assert runnable_format("fcpack") == "onnx"
    with pytest.raises(IncompatibleModelError):
        runnable_format("tflite-mystery")
