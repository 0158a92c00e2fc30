"""Calibration and evaluation uploads: one .npz, checked against the model, unpacked.

The upload form (`calibration` and `eval` parts of `POST /v1/models/{name}`) is one
.npz: for each model input name an array whose first axis is the sample axis; an
`eval` upload may also hold `labels`, one integer class per row. For a single-input model the array may be
named `*` (what the SDK sends for `.npy` sample files). Each sample either
carries its own batch axis (`[S, 1, 64]` for an input `[N, 64]`) or not (`[S, 64]`).

`unpack` checks it (names, dtypes, fixed dimensions, sample counts, bounded sizes:
an npz is a zip, so the uncompressed sizes are checked before anything is read) and
writes the compression pipeline's directory format: `00000.npz`, `00001.npz`, ...
(one sample each) and `labels.npy`. File names are ours, never the upload's.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from fleetcast.server.errors import InvalidRequest

logger = logging.getLogger(__name__)

LABELS: Final = "labels"
ONLY_INPUT: Final = "*"      # the array for a single-input model, whatever its input's name
MAX_ARRAYS: Final = 256
UNPACKED_FACTOR: Final = 4   # uncompressed arrays may be this many times the upload limit


@dataclass(frozen=True, kw_only=True)
class SampleLimits:
    max_bytes: int            # the upload as sent
    max_samples: int          # samples in the upload
    keep: int                 # how many of them the pipeline gets (the first ones)


def _arrays(path: Path, role: str, limits: SampleLimits) -> dict[str, np.ndarray]:
    hint = "write it with numpy.savez(file, **{input_name: array_with_samples_first})"
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            if len(entries) > MAX_ARRAYS:
                raise InvalidRequest(f"{role} upload holds {len(entries)} arrays, more than {MAX_ARRAYS}")
            unpacked = sum(e.file_size for e in entries)
            if unpacked > limits.max_bytes * UNPACKED_FACTOR:
                raise InvalidRequest(f"{role} upload unpacks to {unpacked} bytes, more than "
                                     f"{limits.max_bytes * UNPACKED_FACTOR}; send fewer samples")
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except InvalidRequest:
        raise
    except Exception as e:  # zipfile, numpy: ValueError, OSError, BadZipFile...
        raise InvalidRequest(f"{role} upload is not a readable .npz ({type(e).__name__}): {hint}") from e


def _check_input(name: str, array: np.ndarray, spec: Mapping[str, Any], role: str) -> tuple[bool, int]:
    """(samples carry their batch axis, rows per sample); raises InvalidRequest."""
    shape = list(spec["shape"])
    want = np.dtype(spec["dtype"])
    if array.dtype != want and not (array.dtype.kind == want.kind or (array.dtype.kind in "iu" and want.kind in "iuf")):
        raise InvalidRequest(f"{role} input {name!r} is {array.dtype}, the model takes {want}; convert with astype")
    if array.ndim == len(shape) + 1:
        batched, per_sample = True, list(array.shape[1:])
    elif array.ndim == len(shape) and array.ndim >= 1:
        batched, per_sample = False, [1, *array.shape[1:]]
    else:
        raise InvalidRequest(f"{role} input {name!r} has shape {list(array.shape)}; the model takes {shape}, so "
                             f"send [samples, {', '.join(str(d or 'N') for d in shape)}] or "
                             f"[samples, {', '.join(str(d or 'N') for d in shape[1:])}]")
    for got, fixed in zip(per_sample, shape):
        if fixed is not None and got != fixed:
            raise InvalidRequest(f"{role} input {name!r}: one sample has shape {per_sample}, the model takes {shape}")
    return batched, per_sample[0] if shape else 1


def unpack(path: Path, inputs: Mapping[str, Mapping[str, Any]], dest: Path, *, role: str,
           limits: SampleLimits, labels_allowed: bool) -> int:
    """Checks the upload at `path` and writes the kept samples into `dest` (new); returns their count."""
    arrays = _arrays(path, role, limits)
    if ONLY_INPUT in arrays:
        if len(inputs) != 1:
            raise InvalidRequest(f"{role} upload has one unnamed array ('*', from .npy samples) but the model has "
                                 f"{len(inputs)} inputs {sorted(inputs)}; use .npz samples naming each input")
        arrays[next(iter(inputs))] = arrays.pop(ONLY_INPUT)
    allowed = set(inputs) | ({LABELS} if labels_allowed else set())
    missing, unknown = sorted(set(inputs) - set(arrays)), sorted(set(arrays) - allowed)
    if missing or unknown:
        raise InvalidRequest(f"{role} upload does not match the model: missing {missing or 'none'}, unknown "
                             f"{unknown or 'none'}; name one array per input {sorted(inputs)}"
                             + (" plus optional 'labels'" if labels_allowed else ""))
    counts, layout = set(), {}
    for name, spec in inputs.items():
        layout[name] = _check_input(name, arrays[name], spec, role)
        counts.add(len(arrays[name]))
    if len(counts) != 1:
        raise InvalidRequest(f"{role} inputs hold different numbers of samples {sorted(counts)}; give each input "
                             "the same samples along the first axis")
    count = counts.pop()
    if not 1 <= count <= limits.max_samples:
        raise InvalidRequest(f"{role} upload has {count} samples; send between 1 and {limits.max_samples}")
    rows_per_sample = next(iter(layout.values()))[1]
    keep = min(count, limits.keep)
    labels = arrays.get(LABELS)
    if labels is not None:
        labels = labels.reshape(-1)
        if labels.dtype.kind not in "iu" or len(labels) != count * rows_per_sample:
            raise InvalidRequest(f"{role} 'labels' must be integers, one per row: got {len(labels)} "
                                 f"{labels.dtype} for {count * rows_per_sample} rows")
    dest.mkdir(parents=True)
    for i in range(keep):
        feed = {name: arrays[name][i] if batched else arrays[name][i:i + 1]
                for name, (batched, _) in layout.items()}
        np.savez(dest / f"{i:05d}.npz", **{k: np.asarray(v, dtype=inputs[k]["dtype"]) for k, v in feed.items()})
    if labels is not None:
        np.save(dest / f"{LABELS}.npy", labels[:keep * rows_per_sample].astype(np.int64))
    logger.info("samples unpacked role=%s samples=%d kept=%d labels=%s", role, count, keep, labels is not None)
    return keep

