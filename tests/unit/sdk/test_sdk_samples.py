"""Sample directories packed into the one-.npz upload form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetcast.sdk import ConfigError
from fleetcast.sdk._samples import pack

DIGITS = Path(__file__).resolve().parents[3] / "examples" / "digits"


def test_npy_samples_and_labels_pack_with_the_sample_axis_first() -> None:
    with pack(DIGITS / "eval") as packed, np.load(packed) as npz:
        assert sorted(npz.files) == ["*", "labels"]
        assert npz["*"].shape == (540, 1, 64)
        assert np.array_equal(npz["labels"], np.load(DIGITS / "eval" / "labels.npy"))
        assert np.array_equal(npz["*"][7], np.load(DIGITS / "eval" / "0007.npy"))


def test_samples_of_different_shapes_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros((1, 4), np.float32))
    np.savez(tmp_path / "b.npz", x=np.zeros((1, 5), np.float32))
    with pytest.raises(ConfigError, match="differ in the shape"):
        pack(tmp_path)
