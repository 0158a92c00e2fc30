"""How close a build's outputs are to the original's, output by output and sample by sample.

Every output of every sample is compared on its own, so samples of different shapes
(images of different sizes, text lines of different widths) never have to be stacked.
A sample here is one row of a file's batch when the output keeps the batch axis, else
the file's whole output. Each output gets:
- `cosine`: the mean over samples of the cosine similarity of the flattened outputs;
- `snr_db`: the mean over samples of 10 log10(|reference|^2 / |reference - build|^2),
  a sample with identical outputs counted as `MAX_SNR_DB`;
- a task-shaped figure chosen from the output's shape and values (`OutputKind`):

| kind       | chosen when (on the original's outputs)                                  | figure |
|------------|--------------------------------------------------------------------------|--------|
| `classes`  | 2-D, `[N, C]` with C >= 2                                                | top-1 agreement, % of samples |
| `sequence` | 3-D `[N, T, C]` (or time-major `[T, N, C]`), C >= 2, unless it is a mask | greedy CTC decoding (argmax per step, repeats merged, blank `CTC_BLANK` dropped): % of samples decoded to the same sequence |
| `mask`     | 3-D or more, every value in [0, 1], not summing to 1 over the last axis  | masks thresholded at `MASK_THRESHOLD`: mean intersection over union, % (two empty masks agree fully) |
| `tensor`   | anything else                                                            | 100 x mean cosine |

The score a budget is checked on (`Quality.score` in `measure`) is the lowest of the
outputs' figures, so a budget holds for every output. When the samples are too few
for a discrete figure to resolve the budget (`measure.rows_needed`), classifiers are
judged by 100 x mean cosine and sequences by the share of time steps whose top class
is unchanged (cosine on log-probabilities is too lenient there: a build at cosine 0.990
read only a third of the text lines as the original did).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

CTC_BLANK: Final = 0            # index of the blank class in sequence outputs (PyTorch's CTCLoss default)
MASK_THRESHOLD: Final = 0.5
MAX_SNR_DB: Final = 200.0       # identical outputs; float32 rounding noise is about 140 dB below the signal
SOFTMAX_TOLERANCE: Final = 1e-3

# name -> one array per sample, in sample order
Outputs = Mapping[str, Sequence[np.ndarray]]


class OutputKind(enum.StrEnum):
    CLASSES = "classes"
    SEQUENCE = "sequence"
    MASK = "mask"
    TENSOR = "tensor"


DISCRETE_KINDS: Final = frozenset({OutputKind.CLASSES, OutputKind.SEQUENCE})


@dataclass(frozen=True)
class OutputFidelity:
    name: str
    kind: str
    cosine: float
    snr_db: float
    figure_pct: float               # the kind's figure (table above), in percent
    allowance_pp: float             # one standard error of that figure (see measure)
    changed: int                    # samples whose discrete outcome changed (classes, sequence)
    samples: int

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "cosine": round(self.cosine, 7),
                "snr_db": round(self.snr_db, 3), "figure_pct": round(self.figure_pct, 4), "samples": self.samples}


def split_samples(array: np.ndarray, rows: int, *, time_major: bool = False) -> list[np.ndarray]:
    """One array per sample: rows of the batch axis when the output keeps it (axis 1 for
    time-major sequences), else the whole output as one sample."""
    if time_major and array.ndim >= 2 and array.shape[1] == rows:
        return [array[:, i] for i in range(rows)]
    if array.ndim >= 1 and array.shape[0] == rows:
        return [array[i] for i in range(rows)]
    return [array]


def is_time_major(first: np.ndarray, rows: int) -> bool:
    return first.ndim == 3 and first.shape[0] != rows and first.shape[1] == rows


def kind_of(samples: Sequence[np.ndarray]) -> OutputKind:
    """The output's kind from its per-sample arrays (batch axis removed), see the table."""
    ndim = {sample.ndim for sample in samples}
    if len(ndim) != 1 or any(sample.size == 0 for sample in samples):
        return OutputKind.TENSOR
    rank = ndim.pop() + 1                  # the rank with the batch axis
    if rank == 2 and all(sample.shape[-1] >= 2 for sample in samples):
        return OutputKind.CLASSES
    if rank >= 3:
        in_unit_range = all(float(s.min()) >= 0.0 and float(s.max()) <= 1.0 for s in samples)
        softmax = in_unit_range and all(np.allclose(s.sum(-1), 1.0, atol=SOFTMAX_TOLERANCE) for s in samples)
        if rank == 3 and all(s.shape[-1] >= 2 for s in samples) and (softmax or not in_unit_range):
            return OutputKind.SEQUENCE
        if in_unit_range:
            return OutputKind.MASK
    return OutputKind.TENSOR


def greedy_decode(steps: np.ndarray) -> tuple[int, ...]:
    """CTC greedy decoding of one sample's [T, C] scores."""
    best = np.asarray(steps).reshape(-1, steps.shape[-1]).argmax(-1)
    merged = [int(c) for i, c in enumerate(best) if i == 0 or c != best[i - 1]]
    return tuple(c for c in merged if c != CTC_BLANK)


def step_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """The fraction of one sample's time steps whose top class is unchanged."""
    a = reference.reshape(-1, reference.shape[-1]).argmax(-1)
    b = candidate.reshape(-1, candidate.shape[-1]).argmax(-1)
    return float((a == b).mean()) if len(a) else 1.0


def mask_iou(reference: np.ndarray, candidate: np.ndarray) -> float:
    a, b = reference > MASK_THRESHOLD, candidate > MASK_THRESHOLD
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    a, b = reference.reshape(-1).astype(np.float64), candidate.reshape(-1).astype(np.float64)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(a @ b) / norms


def snr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    a = reference.astype(np.float64)
    noise = float(((a - candidate.astype(np.float64)) ** 2).sum())
    if noise == 0.0:
        return MAX_SNR_DB
    return min(MAX_SNR_DB, 10.0 * float(np.log10(max(float((a ** 2).sum()), 1e-30) / noise)))


def same_outcome(kind: OutputKind, reference: np.ndarray, candidate: np.ndarray) -> bool:
    if kind is OutputKind.CLASSES:
        return int(reference.argmax()) == int(candidate.argmax())
    return greedy_decode(reference) == greedy_decode(candidate)


def standard_error_pp(values: np.ndarray) -> float:
    return 100.0 * float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def compare_output(name: str, kind: OutputKind, reference: Sequence[np.ndarray],
                   candidate: Sequence[np.ndarray], *, continuous: bool) -> OutputFidelity:
    """One output's fidelity over all samples. With `continuous` (too few samples for a
    discrete figure to resolve the budget), sequences are judged by the share of time
    steps whose top class is unchanged, averaged over samples (many steps per sample:
    fine-grained, and faithful to what decoding reads), and classifiers by 100 x mean
    cosine."""
    if len(reference) != len(candidate):
        raise ValueError(f"output {name!r}: {len(candidate)} samples against {len(reference)}")
    cosines = np.array([cosine(r, c) for r, c in zip(reference, candidate)])
    snrs = np.array([snr_db(r, c) for r, c in zip(reference, candidate)])
    changed = 0
    if kind in DISCRETE_KINDS and not continuous:
        same = np.array([same_outcome(kind, r, c) for r, c in zip(reference, candidate)])
        changed = int((~same).sum())
        figure = 100.0 * float(same.mean())
        allowance = 100.0 * float(np.sqrt(2.0 * (changed + 1))) / len(same)
    elif kind is OutputKind.SEQUENCE and continuous:
        steps = np.array([step_agreement(r, c) for r, c in zip(reference, candidate)])
        figure, allowance = 100.0 * float(steps.mean()), standard_error_pp(steps)
    elif kind is OutputKind.MASK:
        ious = np.array([mask_iou(r, c) for r, c in zip(reference, candidate)])
        figure, allowance = 100.0 * float(ious.mean()), standard_error_pp(ious)
    else:
        figure, allowance = 100.0 * float(cosines.mean()), standard_error_pp(cosines)
    return OutputFidelity(name, str(kind), float(cosines.mean()), float(snrs.mean()), figure, allowance,
                          changed, len(reference))
