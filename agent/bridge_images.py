"""Image inputs of the H5 bridge: RGBA pixels plus a preprocessing spec, applied here.

The page never decodes pixels into model tensors itself: it passes an `ImageData` (or a
`Blob`, which the SDK decodes with the WebView's own image decoder into RGBA) and a
spec; the agent turns it into the model's input natively with numpy:

    {"resize": [h, w], "channels": "rgb"|"gray", "scale": 1/255,
     "mean": [...], "std": [...], "layout": "NCHW"|"NHWC", "dtype": "float32",
     "reshape": [1, 64]}

Steps, in order: drop alpha; `gray` takes ITU-R BT.601 luma; resize (per axis: area
averaging when shrinking, as OpenCV's INTER_AREA, so thin strokes survive; bilinear
with half-pixel centres when enlarging, as INTER_LINEAR); `x * scale`; `(x - mean) / std` per
channel; add the batch axis in `layout`; cast to `dtype`; optionally `reshape`.
Everything is bounded: pixels up to MAX_PIXELS, resize targets up to MAX_SIDE.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from fleetcast.agent.bridge_frames import DTYPES, BridgeError

MAX_SIDE: Final = 4096
MAX_PIXELS: Final = 4096 * 4096
_LUMA: Final = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _invalid(message: str) -> BridgeError:
    return BridgeError("INVALID_ARGUMENT", f"image: {message}")


def _floats(value: Any, n: int, default: float, what: str) -> np.ndarray:
    if value is None:
        return np.full(n, default, dtype=np.float32)
    if isinstance(value, (int, float)):
        value = [value]
    if (not isinstance(value, list) or len(value) not in (1, n)
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)):
        raise _invalid(f"{what} must be a number or {n} finite numbers")
    return np.broadcast_to(np.asarray(value, dtype=np.float32), (n,)).copy()


def _area_weights(out: int, size: int) -> np.ndarray:
    """[out, size]: the share of each input pixel in each output pixel's footprint."""
    edges = np.arange(out + 1, dtype=np.float64) * (size / out)
    left, right = edges[:-1, None], edges[1:, None]
    cells = np.arange(size, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(right, cells + 1) - np.maximum(left, cells), 0, None)
    return (overlap / (size / out)).astype(np.float32)


def _linear_weights(out: int, size: int) -> np.ndarray:
    """[out, size]: two-tap bilinear weights with half-pixel centres, edges clamped."""
    pos = np.clip((np.arange(out, dtype=np.float64) + 0.5) * (size / out) - 0.5, 0, size - 1)
    low = np.floor(pos).astype(np.intp)
    high = np.minimum(low + 1, size - 1)
    weights = np.zeros((out, size), dtype=np.float64)
    np.add.at(weights, (np.arange(out), low), 1 - (pos - low))
    np.add.at(weights, (np.arange(out), high), pos - low)
    return weights.astype(np.float32)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, C] float32 -> [height, width, C]; each axis shrunk by area, enlarged bilinearly."""
    in_h, in_w = image.shape[:2]
    rows = _area_weights(height, in_h) if height < in_h else _linear_weights(height, in_h)
    cols = _area_weights(width, in_w) if width < in_w else _linear_weights(width, in_w)
    return np.einsum("ah,hwc,bw->abc", rows, image, cols, optimize=True).astype(np.float32)


def preprocess(rgba: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """The model input that `spec` asks for, from [H, W, 4] uint8 pixels."""
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise _invalid("pixels must be uint8 [height, width, 4] (RGBA, as ImageData holds them)")
    if rgba.shape[0] * rgba.shape[1] > MAX_PIXELS or 0 in rgba.shape:
        raise _invalid(f"{rgba.shape[1]}x{rgba.shape[0]} is empty or over {MAX_PIXELS} pixels")
    if not isinstance(spec, Mapping):
        raise _invalid("preprocess must be an object")
    unknown = set(spec) - {"resize", "channels", "scale", "mean", "std", "layout", "dtype", "reshape"}
    if unknown:
        raise _invalid(f"unknown preprocess keys {sorted(unknown)}")
    channels = spec.get("channels", "rgb")
    if channels not in ("rgb", "gray"):
        raise _invalid("channels must be 'rgb' or 'gray'")
    x = rgba[:, :, :3].astype(np.float32)
    if channels == "gray":
        x = (x @ _LUMA)[:, :, None]
    target = spec.get("resize")
    if target is not None:
        if (not isinstance(target, list) or len(target) != 2
                or not all(type(v) is int and 0 < v <= MAX_SIDE for v in target)):
            raise _invalid(f"resize must be [height, width], each 1..{MAX_SIDE}")
        if list(x.shape[:2]) != target:
            x = resize(x, target[0], target[1])
    c = x.shape[2]
    scale = spec.get("scale", 1.0)
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise _invalid("scale must be a finite number")
    std = _floats(spec.get("std"), c, 1.0, "std")
    if np.any(std == 0):
        raise _invalid("std must not be 0")
    x = (x * np.float32(scale) - _floats(spec.get("mean"), c, 0.0, "mean")) / std
    layout = spec.get("layout", "NCHW")
    if layout not in ("NCHW", "NHWC"):
        raise _invalid("layout must be 'NCHW' or 'NHWC'")
    x = x.transpose(2, 0, 1)[None] if layout == "NCHW" else x[None]
    dtype = spec.get("dtype", "float32")
    if dtype not in DTYPES:
        raise _invalid(f"dtype {str(dtype)[:32]!r} is not one of {sorted(DTYPES)}")
    x = np.ascontiguousarray(x.astype(dtype))
    reshape = spec.get("reshape")
    if reshape is not None:
        if not isinstance(reshape, list) or not all(type(v) is int and v > 0 for v in reshape) \
                or math.prod(reshape) != x.size:
            raise _invalid(f"reshape {str(reshape)[:60]} does not hold {x.size} values")
        x = x.reshape(reshape)
    return x
