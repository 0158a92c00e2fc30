"""Uploads in every format and per-target builds, through the real registry."""

from __future__ import annotations

import io

import numpy as np
import pytest

from fleetcast.server.errors import InvalidRequest, ModelInvalid
from fleetcast.server.services import Services
from tests.support import tflite_models


def _stage(services: Services, data: bytes):
    staged = services.blobs.stage(len(data) + 1)
    staged.write(data)
    return staged


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_tflite_upload_is_checked_by_litert_and_recorded_as_tflite(services: Services) -> None:
    v = services.registry.add_version("mlp", _stage(services, tflite_models.mlp()))
    assert [(x.variant, x.format) for x in v.variants] == [("original", "tflite")]
    assert v.inputs == {"input": {"dtype": "float32", "shape": [1, 64]}}
    with np.load(services.blobs.path(v.golden.sha256)) as golden:
        assert golden["output:logits"].shape == (1, 10)


def test_truncated_tflite_is_refused_naming_litert(services: Services) -> None:
    with pytest.raises(ModelInvalid, match="LiteRT"):
        services.registry.add_version("bad", _stage(services, tflite_models.mlp()[:300]))


def test_compression_levels_are_refused_for_a_tflite_upload(services: Services) -> None:
    with pytest.raises(InvalidRequest, match="per-target builds go in 'targets'"):
        services.registry.add_version("mlp", _stage(services, tflite_models.mlp()), compress=("balanced",))


def test_a_target_that_cannot_build_from_the_upload_format_is_refused(services: Services) -> None:
    with pytest.raises(InvalidRequest, match="builds from onnx"):
        services.registry.add_version("mlp", _stage(services, tflite_models.mlp()), targets=("rknn-rk3588",))


def test_dynamic_model_gets_its_golden_input_from_the_first_calibration_sample_and_each_build_its_own_golden(
    services: Services, model_bytes: bytes
) -> None:
    samples = np.random.default_rng(4).standard_normal((5, 16)).astype(np.float32)
    v = services.registry.add_version("tiny", _stage(services, model_bytes), targets=("mnn", "openvino"),
                                      calibration=_stage(services, _npz(input=samples)))
    with np.load(services.blobs.path(v.golden.sha256)) as golden:
        np.testing.assert_array_equal(golden["input:input"], samples[:1])    # not random 1x16 numbers
        reference = golden["output:output"]
    done = services.registry.version("tiny", v.version)           # unbound builds run in this thread
    assert done.compression["status"] == "done" and done.compression["levels"] == [
        {"level": "mnn", "error": None}, {"level": "openvino", "error": None}], done.compression
    for name in ("mnn", "openvino"):
        built = done.variant(name)
        assert built is not None and built.format == name and built.golden is not None
        assert built.metrics["within_budget"] is True and built.metrics["measured_on"] == "build machine"
        with np.load(services.blobs.path(built.golden.sha256)) as golden:
            np.testing.assert_allclose(golden["output:output"], reference, atol=1e-5)


def test_tflite_upload_builds_an_mnn_variant_whose_outputs_match_litert(services: Services) -> None:
    v = services.registry.add_version("mlp", _stage(services, tflite_models.mlp()), targets=("mnn",))
    done = services.registry.version("mlp", v.version)
    built = done.variant("mnn")
    assert built is not None and built.format == "mnn", done.compression
    assert built.metrics["original_backend"] == "litert" and built.metrics["within_budget"] is True
    with np.load(services.blobs.path(v.golden.sha256)) as original, \
            np.load(services.blobs.path(built.golden.sha256)) as own:
        np.testing.assert_allclose(own["output:logits"], original["output:logits"], atol=1e-3, rtol=1e-3)
