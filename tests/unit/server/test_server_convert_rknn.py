"""ONNX -> RKNN with rknn-toolkit2 in its own environment, then its simulator.

Optional: runs when that environment exists (`make rknn-env`, or FLEETCAST_RKNN_PYTHON
naming its python); without it the conversion must fail with the set-up instructions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fleetcast.server.convert import rknn
from fleetcast.server.convert.build import RKNN_TOLERANCE, build_targets
from fleetcast.server.convert.targets import ConversionError
from tests.support import models

ROOT = Path(__file__).resolve().parents[3]
TOOLKIT = Path(os.environ.get(rknn.ENV_VAR) or ROOT / ".venv-rknn" / "bin" / "python")


def test_without_the_toolkit_environment_the_target_fails_saying_how_to_set_it_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(rknn.ENV_VAR, raising=False)
    source = models.write(models.tiny_classifier(1), tmp_path / "m.onnx")
    with pytest.raises(ConversionError, match="make rknn-env"):
        rknn.convert(source, "onnx", tmp_path, platform="rk3588")
    built, errors = build_targets(source, "onnx", ["rknn-rk3566"], {"input": models.sample_input()}, tmp_path,
                                  lambda _: None)
    assert built == [] and "FLEETCAST_RKNN_PYTHON" in errors["rknn-rk3566"]


@pytest.mark.skipif(not TOOLKIT.is_file(), reason="rknn-toolkit2 environment not installed (make rknn-env)")
def test_onnx_converts_to_rknn_and_the_simulator_matches_onnxruntime(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rknn.ENV_VAR, str(TOOLKIT))
    source = models.write(models.tiny_classifier(3), tmp_path / "m.onnx")
    x = models.sample_input(16, rows=1, seed=2)
    built, errors = build_targets(source, "onnx", ["rknn-rk3588"], {"input": x}, tmp_path, lambda _: None)
    assert not errors, errors
    [variant] = built
    assert variant.format == "rknn" and variant.path.stat().st_size > 0
    assert variant.metrics["platform"] == "rk3588" and variant.metrics["within_budget"] is True, variant.metrics
    want = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(variant.golden_outputs["output"], want, atol=RKNN_TOLERANCE[0], rtol=RKNN_TOLERANCE[1])
    assert not np.array_equal(variant.golden_outputs["output"], want)   # the simulator computed it (FP16), not a copy
