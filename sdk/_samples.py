"""Sample directories packed into the one-.npz upload form of `push_model`.

A directory (the `fleetcast compress` format) holds one `.npz` (input name ->
array) or `.npy` (single-input models) per sample, read in name order, and may hold
`labels.npy`. Packed, each input becomes one array whose first axis is the sample
axis (`.npy` samples go under the key `*`, which the server maps to the model's
only input) and the labels go under `labels`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO, Final

import numpy as np

from fleetcast.sdk._errors import ConfigError

MAX_SAMPLES: Final = 10_000
LABELS_FILE: Final = "labels.npy"
ONLY_INPUT: Final = "*"


def _read(path: Path) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npy":
            return {ONLY_INPUT: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except Exception as e:  # numpy: ValueError, OSError, zip errors
        raise ConfigError(f"sample {path} is not readable numpy data ({e}); write it with numpy.save/savez") from e


def pack(directory: Path) -> IO[bytes]:
    """The directory's samples as one .npz in a temp file (rewound); raises ConfigError."""
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory of .npz/.npy samples")
    files = sorted(p for p in directory.iterdir() if p.suffix in {".npz", ".npy"} and p.name != LABELS_FILE)
    if not files:
        raise ConfigError(f"{directory} holds no .npz or .npy samples")
    if len(files) > MAX_SAMPLES:
        raise ConfigError(f"{directory} holds {len(files)} samples; the server takes at most {MAX_SAMPLES}")
    samples = [_read(p) for p in files]
    keys = set(samples[0])
    columns: dict[str, np.ndarray] = {}
    for key in sorted(keys):
        if any(set(s) != keys for s in samples):
            raise ConfigError(f"samples in {directory} do not all hold the same arrays {sorted(keys)}")
        try:
            columns[key] = np.stack([s[key] for s in samples])
        except ValueError as e:
            raise ConfigError(f"samples in {directory} differ in the shape of {key!r}: {e}") from e
    if (directory / LABELS_FILE).is_file():
        columns["labels"] = np.load(directory / LABELS_FILE, allow_pickle=False).reshape(-1)
    packed = tempfile.TemporaryFile()
    np.savez(packed, **columns)  # type: ignore[arg-type]
    packed.seek(0)
    return packed
