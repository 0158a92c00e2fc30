"""Task metrics for the text models, in the form `fleetcast compress --metric` takes.

    fleetcast compress examples/ocr/recognizer.onnx --out /tmp/rec \
        --calibration examples/ocr/recognizer/calibration --eval examples/ocr/recognizer/eval \
        --metric examples/ocr/metrics.py:line_accuracy
"""

from __future__ import annotations

import numpy as np


def greedy_text(log_probs: np.ndarray) -> list[int]:
    """CTC greedy decoding of one line's [T, 11] scores: digits 0-9 (class 0 is blank)."""
    best = log_probs.argmax(-1)
    return [int(c) - 1 for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]


def line_accuracy(outputs: list[dict[str, np.ndarray]], labels: np.ndarray | None) -> float:
    """Percent of lines read exactly; labels are the digits per line padded with -1."""
    if labels is None:
        raise ValueError("line_accuracy needs labels.npy in the evaluation directory")
    read = [greedy_text(output["log_probs"][0]) for output in outputs]
    truth = [[int(d) for d in row if d >= 0] for row in labels]
    return 100.0 * float(np.mean([a == b for a, b in zip(read, truth)]))
