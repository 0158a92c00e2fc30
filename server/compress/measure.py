"""Measuring a build: latency on onnxruntime's CPU provider, and quality against labels
or against the original model's outputs.

Quality figures are percentages so a budget in percentage points compares directly:
- with labels: top-1 accuracy;
- without, for a classifier output ([N, classes]): top-1 agreement with the original;
- otherwise: 100 x mean cosine similarity, with the signal-to-noise ratio beside it.

Each figure also carries a confidence allowance (`Quality.allowance_pp`): how far the
same build may plausibly score lower on samples it was not measured on. The searches
accept a choice only when its score minus that allowance (`guarded_score`) meets the
floor, so what they pick on the validation samples still holds on the held-out ones.
For classifiers, with `k` samples whose outcome changed (correctness with labels,
top-1 without) out of `n`, it is one standard error of the difference between two
such halves' drops, counting one more changed sample than seen so that a choice that
changed nothing still has a margin: 100 x sqrt(2 (k + 1)) / n points. For cosine
it is 100 x one standard error of the mean cosine.

A build never earns credit for scoring above the original (`Quality.ceiling`): with
labels a compressed build can gain accuracy on the validation samples by luck, and
a gain there says nothing about the held-out ones. Without the cap a choice that
flipped many predictions both ways could pass on a net gain; on ResNet-18 one such
(+1.95 points on validation, 9 % of predictions changed) lost 3.1 points held out.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from fleetcast.server.compress.samples import Feed, SampleSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyConfig:
    warmup_runs: int = 5
    min_runs: int = 20
    max_runs: int = 500
    min_duration_s: float = 1.0
    runs_per_round: int = 5           # pairs alternate in rounds of this many runs each


@dataclass(frozen=True)
class Quality:
    score: float                      # the figure the budget is checked on, in percent
    metric: str                       # "accuracy" | "agreement" | "cosine"
    accuracy_pct: float | None = None
    agreement_pct: float | None = None
    cosine: float | None = None
    snr_db: float | None = None
    allowance_pp: float = 0.0         # confidence allowance for unseen samples (module docstring)
    ceiling: float = 100.0            # the original's score on the same samples

    @property
    def guarded_score(self) -> float:
        """The score the searches check against their floor: the score, never counted
        above the original's, minus the allowance."""
        return min(self.score, self.ceiling) - self.allowance_pp


def open_session(model: bytes | str, *, threads: int, spinning: bool = True) -> ort.InferenceSession:
    """A CPU session; `spinning=False` keeps idle intra-op threads from busy-waiting
    for the next run (onnxruntime spins by default)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_first_output(session: ort.InferenceSession, feeds: tuple[Feed, ...]) -> np.ndarray:
    """The first output over all feeds, stacked along the batch axis, as float64."""
    name = session.get_outputs()[0].name
    outputs = [np.asarray(session.run([name], feed)[0], dtype=np.float64) for feed in feeds]
    return np.concatenate([o.reshape(len(o), -1) if o.ndim else o.reshape(1, 1) for o in outputs])


def measure_latency_ms(model: bytes | str, feed: Feed, *, threads: int, config: LatencyConfig) -> float:
    """Median wall time of one inference, in milliseconds."""
    session = open_session(model, threads=threads)
    for _ in range(config.warmup_runs):
        session.run(None, feed)
    timings: list[float] = []
    started = time.perf_counter()
    while len(timings) < config.max_runs and (
            len(timings) < config.min_runs or time.perf_counter() - started < config.min_duration_s):
        begin = time.perf_counter()
        session.run(None, feed)
        timings.append(time.perf_counter() - begin)
    return statistics.median(timings) * 1000.0


def measure_latency_pair_ms(reference: bytes | str, candidate: bytes | str, feed: Feed, *, threads: int,
                            config: LatencyConfig) -> tuple[float, float]:
    """Median latencies of two models timed in alternating rounds, so that load from
    other processes falls on both alike and their ratio stays meaningful.

    Neither session spins: with several threads, the idle session's workers would
    busy-wait after each of its rounds and take cores from the other one's first
    runs, a fixed cost that weighs most on the faster model. On ResNet-18 at 2
    threads on 2 cores that made INT8 0.39-0.48x FP32 where each timed alone was
    0.33x; without spinning the pair gave 0.35x (docs/benchmarks.md).
    """
    sessions = (open_session(reference, threads=threads, spinning=False),
                open_session(candidate, threads=threads, spinning=False))
    for session in sessions:
        for _ in range(config.warmup_runs):
            session.run(None, feed)
    timings: tuple[list[float], list[float]] = ([], [])
    started = time.perf_counter()
    rounds = 0
    while len(timings[0]) < config.max_runs and (
            len(timings[0]) < config.min_runs or time.perf_counter() - started < 2 * config.min_duration_s):
        for which in ((0, 1) if rounds % 2 == 0 else (1, 0)):
            for _ in range(config.runs_per_round):
                begin = time.perf_counter()
                sessions[which].run(None, feed)
                timings[which].append(time.perf_counter() - begin)
        rounds += 1
    return statistics.median(timings[0]) * 1000.0, statistics.median(timings[1]) * 1000.0


def is_classifier(reference: np.ndarray) -> bool:
    return reference.ndim == 2 and reference.shape[1] >= 2


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None) -> Quality:
    """Quality of `candidate` outputs against the original's `reference` (and labels)."""
    cosines = cosine_per_sample(reference, candidate)
    cosine, snr, rows = float(cosines.mean()), snr_db(reference, candidate), len(reference)
    if not is_classifier(reference):
        allowance = 100.0 * float(cosines.std(ddof=1) / np.sqrt(rows)) if rows > 1 else 0.0
        return Quality(100.0 * cosine, "cosine", None, None, cosine, snr, allowance)
    same = reference.argmax(1) == candidate.argmax(1)
    agreement = 100.0 * float(same.mean())
    if labels is not None:
        correct = candidate.argmax(1) == labels
        accuracy = 100.0 * float(correct.mean())
        originally_correct = reference.argmax(1) == labels
        changed = int((originally_correct != correct).sum())
        return Quality(accuracy, "accuracy", accuracy, agreement, cosine, snr, classifier_allowance(changed, rows),
                       ceiling=100.0 * float(originally_correct.mean()))
    changed = int((~same).sum())
    return Quality(agreement, "agreement", None, agreement, cosine, snr, classifier_allowance(changed, rows))


def classifier_allowance(changed: int, rows: int) -> float:
    """100 x sqrt(2 (changed + 1)) / rows points: one standard error of the difference
    between the drops on two halves of `rows` samples each, one changed sample added."""
    return 100.0 * float(np.sqrt(2.0 * (changed + 1))) / rows


def cosine_per_sample(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    dot = (reference * candidate).sum(1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    both_zero = norms == 0
    return np.where(both_zero, 1.0, dot / np.where(both_zero, 1.0, norms))


def snr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    noise = float(((reference - candidate) ** 2).sum())
    signal = float((reference ** 2).sum())
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-30) / noise))


class Evaluator:
    """Scores builds on one sample set against the original model's outputs there."""

    def __init__(self, original: bytes, samples: SampleSet, *, threads: int) -> None:
        self.original = original
        self.samples = samples
        self.threads = threads
        self.reference = run_first_output(open_session(original, threads=threads), samples.feeds)
        self.baseline = compare(self.reference, self.reference, samples.labels)

    def evaluate(self, model: bytes | str) -> Quality:
        outputs = run_first_output(open_session(model, threads=self.threads), self.samples.feeds)
        return compare(self.reference, outputs, self.samples.labels)

    def drop_pp(self, quality: Quality) -> float:
        return self.baseline.score - quality.score
