from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetcast.agent.bridge_frames import BridgeError
from fleetcast.agent.bridge_images import preprocess, resize


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_shrinking_by_a_whole_factor_averages_each_block(h: int, w: int, fy: int, fx: int, seed: int) -> None:
    x = np.random.default_rng(seed).random((h * fy, w * fx, 3), dtype=np.float32)
    want = x.reshape(h, fy, w, fx, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(resize(x, h, w), want, rtol=1e-5, atol=1e-6)


def test_enlarging_is_bilinear_with_half_pixel_centres() -> None:
    x = np.array([[0.0, 10.0]], dtype=np.float32)[:, :, None]        # 1x2 -> 1x4
    assert resize(x, 1, 4)[0, :, 0].tolist() == pytest.approx([0.0, 2.5, 7.5, 10.0])
    constant = np.full((3, 5, 2), 7.0, np.float32)
    assert np.allclose(resize(constant, 11, 2), 7.0)


def test_a_thin_stroke_survives_shrinking_to_the_digits_input() -> None:
    rgba = np.zeros((192, 192, 4), np.uint8)
    rgba[20:170, 90:100, :3] = 255
    x = preprocess(rgba, {"channels": "gray", "resize": [8, 8], "scale": 16 / 255, "reshape": [1, 64]})
    grid = x.reshape(8, 8)
    assert grid[:, 3].min() > 0 and grid[:, 0].max() == 0


def test_spec_applies_scale_mean_std_layout_and_dtype_per_channel() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 255, 0, 51, 9
    spec = {"scale": 1 / 255, "mean": [0.5, 0.0, 0.2], "std": [0.5, 1.0, 0.1], "dtype": "float32"}
    nchw = preprocess(rgba, dict(spec, layout="NCHW"))
    nhwc = preprocess(rgba, dict(spec, layout="NHWC"))
    assert nchw.shape == (1, 3, 2, 2) and nhwc.shape == (1, 2, 2, 3) and nchw.dtype == np.float32
    np.testing.assert_allclose(nchw[0, :, 0, 0], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(nchw.transpose(0, 2, 3, 1), nhwc)
    assert preprocess(rgba, {"dtype": "uint8", "layout": "NHWC"}).tolist()[0][0][0] == [255, 0, 51]


@pytest.mark.parametrize("pixels, spec, words", [
    (np.zeros((2, 2, 3), np.uint8), {}, "RGBA"),
    (np.zeros((2, 2, 4), np.float32), {}, "uint8"),
    (np.zeros((2, 2, 4), np.uint8), {"resize": [0, 8]}, "resize"),
    (np.zeros((2, 2, 4), np.uint8), {"resize": [9000, 8]}, "resize"),
    (np.zeros((2, 2, 4), np.uint8), {"std": [0]}, "std"),
    (np.zeros((2, 2, 4), np.uint8), {"mean": [1, 2]}, "mean"),
    (np.zeros((2, 2, 4), np.uint8), {"layout": "CHW"}, "layout"),
    (np.zeros((2, 2, 4), np.uint8), {"dtype": "object"}, "dtype"),
    (np.zeros((2, 2, 4), np.uint8), {"reshape": [5]}, "reshape"),
    (np.zeros((2, 2, 4), np.uint8), {"rotate": 90}, "unknown"),
    (np.zeros((2, 2, 4), np.uint8), {"scale": float("nan")}, "scale"),
])
def test_bad_images_and_specs_are_invalid_argument(pixels: np.ndarray, spec: dict, words: str) -> None:
    with pytest.raises(BridgeError) as e:
        preprocess(pixels, spec)
    assert e.value.code == "INVALID_ARGUMENT" and words in e.value.message
