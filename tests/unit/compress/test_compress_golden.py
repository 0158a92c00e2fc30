"""A pushed model with free dimensions gets its first sample as the golden input, and
`push --compress` builds on such a model like on any other."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fleetcast.server.config import ServerConfig
from fleetcast.server.services import Services, open_services

from tests.unit.compress.builders import ROOT

pytestmark = pytest.mark.timeout(240)

DETECTOR = ROOT / "examples" / "ocr" / "detector.onnx"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    opened = open_services(ServerConfig(data_dir=tmp_path / "data", max_upload_bytes=8 * 1024 * 1024))
    try:
        yield opened
    finally:
        opened.close()


def stage(services: Services, data: bytes):
    staged = services.blobs.stage(len(data) + 1)
    staged.write(data)
    return staged


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def golden(services: Services, version) -> dict[str, np.ndarray]:
    with np.load(services.blobs.path(version.golden.sha256)) as archive:
        return {key: archive[key] for key in archive.files}


def test_a_free_shape_model_pushed_with_samples_gets_the_first_sample_as_golden_input_and_compresses(
        services: Services) -> None:
    images = np.random.default_rng(0).uniform(0, 1, (8, 1, 1, 40, 36)).astype(np.float32)
    version = services.registry.add_version("det", stage(services, DETECTOR.read_bytes()),
                                            compress=("lossless", "balanced"),
                                            calibration=stage(services, npz(image=images)))
    inputs = golden(services, version)["input:image"]
    assert inputs.shape == (1, 1, 40, 36) and np.array_equal(inputs, images[0])
    done = services.registry.version("det", version.version)   # the job ran in this thread (no event loop)
    assert done.compression["status"] == "done", done.compression
    assert done.compression["levels"] == [{"level": "lossless", "error": None}, {"level": "balanced", "error": None}]
    balanced = done.variant("balanced")
    assert balanced.golden is not None
    with np.load(services.blobs.path(balanced.golden.sha256)) as archive:
        assert archive["input:image"].shape == (1, 1, 40, 36)
        assert archive["output:probability"].shape == (1, 1, 40, 36)


def test_without_samples_the_golden_input_is_still_generated(services: Services) -> None:
    version = services.registry.add_version("det", stage(services, DETECTOR.read_bytes()))
    assert golden(services, version)["input:image"].shape == (1, 1, 1, 1)


def test_samples_that_do_not_fit_are_refused_by_the_sample_check_not_the_golden_run(services: Services) -> None:
    from fleetcast.server.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="image"):
        services.registry.add_version("det", stage(services, DETECTOR.read_bytes()), compress=("lossless",),
                                      calibration=stage(services, npz(image=np.zeros((2, 3, 40, 36), np.float32))))
    assert services.store.versions("det") == []
