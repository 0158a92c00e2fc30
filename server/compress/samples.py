"""Calibration and evaluation samples: loading a directory and checking it fits the model.

A sample directory holds `.npz` files, one sample each (input name -> array), or
`.npy` files for single-input models; files are read in name order. An evaluation
directory may also hold `labels.npy`: one integer class per sample, in that order, or
any numeric array whose first axis follows the samples (padded label sequences, boxes)
for a user metric (`metric.py`). A sample may carry its batch axis ([1, 64]) or not
([64]); it is added when missing. Samples may differ in shape wherever the model's
dimension is free (images of different sizes): each one is run on its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from fleetcast.server.compress.errors import SampleError

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.npy"
Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # int: fixed; str/None: free (batch, say)


@dataclass(frozen=True)
class SampleSet:
    feeds: tuple[Feed, ...]
    labels: np.ndarray | None
    source: Path
    names: tuple[str, ...] = ()       # file names, in feed order (for messages)

    def name(self, index: int) -> str:
        return self.names[index] if index < len(self.names) else f"#{index + 1}"

    def varying_shapes(self) -> bool:
        """Whether the samples differ in shape on some input."""
        return len({tuple((name, array.shape) for name, array in sorted(feed.items())) for feed in self.feeds}) > 1

    def __len__(self) -> int:
        return len(self.feeds)

    def split(self) -> tuple[SampleSet, SampleSet]:
        """(validation, held_out): the even-numbered samples in file-name order, and the
        odd-numbered ones. Interleaving keeps both parts alike when files are sorted by
        class. The searches score on validation; the report measures on held_out, which
        they never see. A single sample cannot be split: it is returned as both."""
        if len(self.feeds) < 2:
            return self, self
        return self.subset(range(0, len(self.feeds), 2)), self.subset(range(1, len(self.feeds), 2))

    def subset(self, indices: range) -> SampleSet:
        labels = None
        if self.labels is not None:
            rows = np.cumsum([0] + [len(next(iter(feed.values()))) for feed in self.feeds])
            labels = np.concatenate([self.labels[rows[i]:rows[i + 1]] for i in indices])
        names = tuple(self.name(i) for i in indices) if self.names else ()
        return SampleSet(tuple(self.feeds[i] for i in indices), labels, self.source, names)

    def rows(self) -> int:
        """Samples counted along the batch axis (a file may hold a batch)."""
        return sum(len(next(iter(feed.values()))) for feed in self.feeds)


def input_specs(model: onnx.ModelProto) -> tuple[InputSpec, ...]:
    """The model's real inputs (graph inputs that are not initializers)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in tensor_type.shape.dim)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        specs.append(InputSpec(value.name, dtype, dims))
    return tuple(specs)


def load_samples(directory: Path, specs: tuple[InputSpec, ...], *, role: str,
                 max_samples: int | None = None) -> SampleSet:
    """Read and check a sample directory; `role` ("calibration"/"evaluation") names it in errors."""
    directory = Path(directory)
    if directory.is_file():
        raise SampleError(f"{role} path {directory} is a file, not a directory; pass the directory that holds "
                          "the sample files (one .npz or .npy per sample)")
    if not directory.is_dir():
        raise SampleError(f"{role} directory {directory} does not exist; pass a directory of .npz or .npy files")
    files = sorted(p for p in directory.iterdir() if p.suffix in {".npz", ".npy"} and p.name != LABELS_FILE)
    if not files:
        raise SampleError(f"{role} directory {directory} holds no .npz or .npy samples; add one file per sample "
                          "(input name -> array in .npz, or .npy for single-input models)")
    if max_samples is not None:
        files = files[:max_samples]
    feeds = tuple(check_feed(read_file(path, specs, role), specs, path, role) for path in files)
    labels = read_labels(directory, feeds, specs, role) if (directory / LABELS_FILE).exists() else None
    if labels is not None and max_samples is not None:
        labels = labels[:sum(len(next(iter(feed.values()))) for feed in feeds)]
    logger.info("loaded role=%s samples=%d labels=%s dir=%s", role, len(feeds), labels is not None, directory)
    return SampleSet(feeds, labels, directory, tuple(path.name for path in files))


def read_file(path: Path, specs: tuple[InputSpec, ...], role: str) -> Feed:
    try:
        if path.suffix == ".npy":
            if len(specs) != 1:
                names = ", ".join(spec.name for spec in specs)
                raise SampleError(f"{role} sample {path.name} is a .npy file but the model has {len(specs)} "
                                  f"inputs ({names}); use .npz files mapping each input name to its array")
            return {specs[0].name: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except SampleError:
        raise
    except Exception as error:  # numpy raises ValueError, OSError, zipfile errors...
        raise SampleError(f"{role} sample {path} cannot be read as numpy data ({error}); "
                          "write samples with numpy.save / numpy.savez") from error


def check_feed(feed: Feed, specs: tuple[InputSpec, ...], path: Path, role: str) -> Feed:
    expected = {spec.name for spec in specs}
    if set(feed) != expected:
        raise SampleError(f"{role} sample {path.name} has arrays {sorted(feed)} but the model's inputs are "
                          f"{sorted(expected)}; name each array after the input it feeds")
    checked = {}
    for spec in specs:
        array = feed[spec.name]
        if array.ndim == len(spec.shape) - 1:
            array = array[None, ...]
        if array.ndim != len(spec.shape) or any(
                isinstance(want, int) and want > 0 and got != want for got, want in zip(array.shape, spec.shape)):
            raise SampleError(f"{role} sample {path.name}: input {spec.name!r} has shape {list(array.shape)}, "
                              f"the model expects {list(spec.shape)}; reshape the samples to match")
        if array.dtype != spec.dtype:
            if array.dtype.kind != spec.dtype.kind and not (array.dtype.kind in "iu" and spec.dtype.kind in "iuf"):
                raise SampleError(f"{role} sample {path.name}: input {spec.name!r} is {array.dtype}, the model "
                                  f"expects {spec.dtype}; convert the samples with array.astype")
            array = array.astype(spec.dtype)
        checked[spec.name] = np.ascontiguousarray(array)
    return checked


def read_labels(directory: Path, feeds: tuple[Feed, ...], specs: tuple[InputSpec, ...], role: str) -> np.ndarray:
    try:
        labels = np.load(directory / LABELS_FILE, allow_pickle=False)
    except Exception as error:  # numpy: ValueError (pickled objects), OSError
        raise SampleError(f"{directory / LABELS_FILE} cannot be read as a numpy array ({error}); "
                          "write it with numpy.save, one row per sample") from error
    rows = sum(len(feed[specs[0].name]) for feed in feeds)
    if labels.ndim <= 1 or (labels.ndim == 2 and labels.shape[1] == 1 and labels.dtype.kind in "iu"):
        labels = labels.reshape(-1)
    if labels.dtype.kind not in "iuf":
        raise SampleError(f"{directory / LABELS_FILE} holds {labels.dtype}, not numbers; "
                          "store one integer class (or one numeric row) per sample")
    if len(labels) != rows:
        raise SampleError(f"{directory / LABELS_FILE} has {len(labels)} labels for {rows} samples in {directory}; "
                          "give exactly one label per sample, in file-name order")
    return labels.astype(np.int64) if labels.dtype.kind in "iu" else labels


def synthetic_feed(specs: tuple[InputSpec, ...], *, seed: int = 0) -> Feed:
    """One batch-1 input for latency runs when no samples were given (free dims -> 1)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
        if spec.dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feed[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
    return feed
