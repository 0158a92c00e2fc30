from __future__ import annotations

import io

import numpy as np
import pytest
from tuf.api.dsse import SimpleEnvelope

from fleetcast.server.errors import GoldenMismatch, InvalidRequest, ModelInvalid, VersionExists
from fleetcast.server.services import Services
from fleetcast.server.signing import artifact_path
from tests.support import models


def _stage(services: Services, data: bytes):
    staged = services.blobs.stage(len(data) + 1)
    staged.write(data)
    return staged


def _blob_count(services: Services) -> int:
    return sum(1 for p in (services.blobs.root / "sha256").rglob("*") if p.is_file())


def _image_targets(services: Services) -> dict:
    signed = SimpleEnvelope.from_bytes(services.signer.metadata("image", "targets.json")).get_signed()
    return {path: t.to_dict() for path, t in signed.targets.items()}


def test_upload_records_version_one_with_original_variant_and_golden(services: Services, model_bytes: bytes) -> None:
    v = services.registry.add_version("digits", _stage(services, model_bytes))
    assert v.version == "1"
    assert [x.variant for x in v.variants] == ["original"]
    assert v.inputs == {"input": {"dtype": "float32", "shape": [None, 16]}}
    assert services.blobs.path(v.variants[0].sha256).read_bytes() == model_bytes
    with np.load(services.blobs.path(v.golden.sha256)) as golden:
        assert sorted(golden.files) == ["input:input", "output:output"]
        assert golden["input:input"].shape == (1, 16)
    targets = _image_targets(services)
    assert targets[artifact_path(v.variants[0].sha256)]["custom"]["fleetcast"]["kind"] == "model"
    assert targets[artifact_path(v.golden.sha256)]["custom"]["fleetcast"]["kind"] == "golden"
    assert services.registry.add_version("digits", _stage(services, model_bytes)).version == "2"


def test_generated_golden_inputs_are_deterministic(services: Services, model_bytes: bytes) -> None:
    a = services.registry.add_version("a", _stage(services, model_bytes))
    b = services.registry.add_version("b", _stage(services, model_bytes))
    with np.load(services.blobs.path(a.golden.sha256)) as ga, np.load(services.blobs.path(b.golden.sha256)) as gb:
        assert np.array_equal(ga["input:input"], gb["input:input"])
        assert np.array_equal(ga["output:output"], gb["output:output"])


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"this is not a model at all" * 10, "ONNX"),
])
def test_garbage_is_refused_and_nothing_is_stored(services: Services, data: bytes, words: str) -> None:
    with pytest.raises(ModelInvalid, match=words):
        services.registry.add_version("bad", _stage(services, data))
    assert _blob_count(services) == 0
    assert list(services.blobs.tmp_dir.iterdir()) == []
    assert services.store.versions("bad") == []


def test_operator_golden_outputs_that_disagree_are_refused(services: Services, model_bytes: bytes) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{"input:input": models.sample_input(), "output:output": np.full((1, 4), 0.25, np.float32) + 0.5})
    with pytest.raises(GoldenMismatch):
        services.registry.add_version("m", _stage(services, model_bytes), golden=_stage(services, buffer.getvalue()))
    assert _blob_count(services) == 0


def test_operator_golden_inputs_are_used(services: Services, model_bytes: bytes) -> None:
    x = models.sample_input(seed=42)
    buffer = io.BytesIO()
    np.savez(buffer, **{"input:input": x})
    v = services.registry.add_version("m", _stage(services, model_bytes), golden=_stage(services, buffer.getvalue()))
    with np.load(services.blobs.path(v.golden.sha256)) as golden:
        assert np.array_equal(golden["input:input"], x)


def test_golden_with_a_wrong_input_name_is_refused(services: Services, model_bytes: bytes) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{"input:pixels": models.sample_input()})
    with pytest.raises(InvalidRequest, match="missing"):
        services.registry.add_version("m", _stage(services, model_bytes), golden=_stage(services, buffer.getvalue()))


def test_bad_names_and_repeated_versions_are_refused(services: Services, model_bytes: bytes) -> None:
    with pytest.raises(InvalidRequest, match="model name"):
        services.registry.add_version("../etc", _stage(services, model_bytes))
    with pytest.raises(InvalidRequest, match="version"):
        services.registry.add_version("m", _stage(services, model_bytes), version="-1/2")
    services.registry.add_version("m", _stage(services, model_bytes), version="v1.0")
    with pytest.raises(VersionExists):
        services.registry.add_version("m", _stage(services, model_bytes), version="v1.0")


def test_compress_levels_become_signed_variants_chosen_per_hardware(services: Services, model_bytes: bytes) -> None:
    from fleetcast.server.fleet import choose_variant
    from fleetcast.server.registry import parse_levels

    first = services.registry.add_version("m", _stage(services, model_bytes), compress=parse_levels("lossless,fp16"))
    assert first.compression is not None and first.compression["status"] == "running"
    v = services.registry.version("m", first.version)   # no event loop here: the job ran in this thread
    assert v.compression["status"] == "done"
    assert v.compression["levels"] == [{"level": "lossless", "error": None}, {"level": "fp16", "error": None}]
    assert v.variant("fp16").golden is not None and v.variant("fp16").golden.atol > v.golden.atol
    names = [x.variant for x in v.variants]
    assert names == ["original", "lossless", "fp16"]
    assert all(services.blobs.exists(x.sha256) for x in v.variants)
    assert set(_image_targets(services)) >= {artifact_path(x.sha256) for x in v.variants}
    assert v.variant("fp16").metrics["agreement_pct"] == 100.0
    assert v.variant("lossless").metrics["snr_db"] is None or isinstance(v.variant("lossless").metrics["snr_db"], float)
    assert choose_variant("jetson", names) == "fp16"
    assert choose_variant("x86-cpu", names) == "lossless"
    assert list(services.blobs.tmp_dir.iterdir()) == []
    with pytest.raises(InvalidRequest, match="unknown level"):
        parse_levels("turbo")


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize("arrays, words", [
    ({"pixels": np.zeros((4, 16), np.float32)}, "missing"),
    ({"input": np.zeros((4, 15), np.float32)}, "shape"),
    ({"input": np.zeros((4, 16), np.float32), "labels": np.zeros(4, np.int64)}, "unknown"),
    ({"input": np.array([["a"] * 16] * 4)}, "convert"),
])
def test_calibration_uploads_that_do_not_fit_the_model_are_refused(
        services: Services, model_bytes: bytes, arrays: dict, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        services.registry.add_version("m", _stage(services, model_bytes), compress=("lossless",),
                                      calibration=_stage(services, _npz(**arrays)))
    assert services.store.versions("m") == []
    assert list(services.blobs.tmp_dir.iterdir()) == []


def test_samples_without_compress_are_refused(services: Services, model_bytes: bytes) -> None:
    with pytest.raises(InvalidRequest, match="only with 'compress'"):
        services.registry.add_version("m", _stage(services, model_bytes),
                                      calibration=_stage(services, _npz(input=np.zeros((2, 16), np.float32))))


def test_levels_that_all_fail_to_build_are_recorded_with_their_reasons(services: Services) -> None:
    data = models.to_bytes(models.masked_classifier())   # a -inf mask: INT8 cannot be built
    calibration = _stage(services, _npz(input=models.sample_input(rows=4)))
    first = services.registry.add_version("m", _stage(services, data), compress=("fastest",), calibration=calibration)
    v = services.registry.version("m", first.version)
    assert v.compression["status"] == "done"
    [level] = v.compression["levels"]
    assert level["level"] == "fastest" and "'mask' hold infinite or NaN values" in level["error"]
    assert [x.variant for x in v.variants] == ["original"]
    assert list(services.blobs.tmp_dir.iterdir()) == []
