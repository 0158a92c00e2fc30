"""Acceleration levels: the names operators and devices see, and who gets which.

The names are the interface; the recipes behind them (in `pipeline.py`) may improve.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final


class Level(enum.StrEnum):
    """Values are persisted as variant names: never rename, never reuse."""

    LOSSLESS = "lossless"
    FP16 = "fp16"
    BALANCED = "balanced"
    FASTEST = "fastest"
    SMALLEST = "smallest"


ALL_LEVELS: Final[tuple[str, ...]] = tuple(level.value for level in Level)

# Levels that cannot be built without calibration samples.
NEEDS_CALIBRATION: Final[frozenset[str]] = frozenset({Level.BALANCED, Level.FASTEST, Level.SMALLEST})

DESCRIPTIONS: Final[Mapping[str, str]] = MappingProxyType({
    Level.LOSSLESS: "graph-optimized FP32 (constant folding, Conv+BN folding, fusions); outputs unchanged",
    Level.FP16: "half-precision weights, float32 inputs and outputs",
    Level.BALANCED: "static INT8 (activation type timed fastest here, int8 per-channel weights), "
                    "sensitive layers kept float within the budget",
    Level.FASTEST: "static INT8 everywhere it runs, no float fallbacks",
    Level.SMALLEST: "magnitude pruning + k-means weight sharing, entropy-coded fcpack; decoded to FP32 on the device",
})

# Hardware class -> variants in the order a device of that class should get them; the
# first one that exists for a model version wins, "original" always exists.
PREFERENCE: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({
    # onnxruntime's x86 kernels run QDQ INT8 with VNNI: 0.3-0.6x FP32 latency measured.
    "x86-cpu": ("balanced", "fastest", "lossless", "original"),
    # ARM cores have int8 dot-product kernels (NEON/sdot) in onnxruntime; no fast FP16 on most.
    "arm-cpu": ("balanced", "fastest", "lossless", "original"),
    # RK3399 boards: slow link and small storage are what binds, so the fcpack build
    # (a fraction of INT8's bytes, decoded to FP32 on the device, within the budget)
    # comes first; INT8 next where no smallest was built.
    "rk3399": ("smallest", "balanced", "fastest", "lossless", "original"),
    # Jetson GPUs run FP16 natively (TensorRT / CUDA EP); QDQ INT8 on GPU needs TensorRT calibration.
    "jetson": ("fp16", "lossless", "original"),
    # Movidius VPUs (OpenVINO MYRIAD) compute in FP16 only.
    "movidius": ("fp16", "lossless", "original"),
    # Android: NNAPI and XNNPACK accelerate INT8; app downloads are metered, so small comes next.
    "phone-android": ("balanced", "fastest", "smallest", "fp16", "original"),
    # iOS: Core ML runs FP16 on the Neural Engine; INT8 QDQ falls back to the CPU there.
    "phone-ios": ("fp16", "balanced", "smallest", "original"),
})


def choose_variant(hardware_class: str, available: frozenset[str] | set[str]) -> str:
    """The variant a device of `hardware_class` should run, given the built ones.

    Unknown classes get the x86 order, which ends in "original" like every order.
    """
    order = PREFERENCE.get(hardware_class, PREFERENCE["x86-cpu"])
    return next((name for name in order if name in available), "original")


def parse_levels(text: str) -> tuple[str, ...]:
    """"balanced,fp16" -> ("balanced", "fp16"); raises ValueError naming the bad name."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in ALL_LEVELS]
    if unknown or not names:
        raise ValueError(f"unknown level(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(ALL_LEVELS)}")
    return names
