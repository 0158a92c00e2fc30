"""Measuring a build: latency on onnxruntime's CPU provider, and quality against labels
or against the original model's outputs.

Quality figures are percentages so a budget in percentage points compares directly:
- with a user metric (`--metric module:function`, `metric.py`): its value;
- with labels and a classifier output ([N, classes]): top-1 accuracy;
- otherwise the lowest of the outputs' own figures (`fidelity.py`: top-1 agreement for
  classifiers, greedy-decoded sequence agreement for CTC-style sequences, thresholded
  mask IoU for probability maps, 100 x mean cosine for other tensors), every output's
  per-sample cosine and SNR beside it.
When the samples are too few for a discrete figure (accuracy, agreement) to resolve
the budget (one sample would move it by more than half the budget, `rows_needed`),
classifier outputs are judged by 100 x mean cosine instead and sequences by the share
of unchanged time steps (`Judge.continuous`, `fidelity.compare_output`): on 16 samples
top-1 agreement moves in steps of 6.25 points and cannot tell a 1-point budget from
anything else, while the outputs' cosine can.

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

from fleetcast.server.compress.errors import SampleError
from fleetcast.server.compress.fidelity import (
    DISCRETE_KINDS,
    OutputFidelity,
    OutputKind,
    compare_output,
    is_time_major,
    kind_of,
    split_samples,
)
from fleetcast.server.compress.metric import TaskMetric
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
    metric: str                       # "accuracy" | "agreement" | "sequence_agreement" | "step_agreement"
                                      # | "mask_iou" | "cosine"
                                      # | "metric:<module:function>"
    accuracy_pct: float | None = None
    agreement_pct: float | None = None
    cosine: float | None = None
    snr_db: float | None = None
    allowance_pp: float = 0.0         # confidence allowance for unseen samples (module docstring)
    ceiling: float = 100.0            # the original's score on the same samples
    outputs: tuple[OutputFidelity, ...] = ()   # every output's figures (fidelity.py)

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


def measure_latency_ratio(reference: bytes | str, candidate: bytes | str, feed: Feed, *, threads: int,
                          config: LatencyConfig, repeats: int = 3) -> tuple[float, float, float]:
    """(median reference ms, median candidate ms, median of the repeats' candidate /
    reference ratios) over `repeats` alternating pairs (`measure_latency_pair_ms`): for
    choices between builds a few percent apart, where one pair on a loaded machine is
    as likely to be wrong as right."""
    pairs = [measure_latency_pair_ms(reference, candidate, feed, threads=threads, config=config)
             for _ in range(repeats)]
    return (statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs),
            statistics.median(b / a for a, b in pairs))


@dataclass(frozen=True, kw_only=True)
class Judge:
    """How builds are scored: by the outputs' own figures (`fidelity`), by continuous
    fidelity (100 x cosine) when the samples are too few for a discrete figure to resolve
    `budget_pp` (`continuous=None` decides that from the samples), or by the user's metric."""

    budget_pp: float = 1.0
    continuous: bool | None = None
    metric: TaskMetric | None = None


def rows_needed(budget_pp: float) -> int:
    """Samples a discrete figure (agreement, accuracy) needs so that one sample moves it
    by at most half the budget."""
    return int(np.ceil(200.0 / max(budget_pp, 1e-9)))


class Evaluator:
    """Scores builds on one sample set against the original model's outputs there.

    Every sample runs on its own (feeds may differ in shape); outputs are compared
    per output and per sample (`fidelity.compare_output`) and then averaged.
    """

    def __init__(self, original: bytes, samples: SampleSet, *, threads: int, judge: Judge = Judge(),
                 role: str = "evaluation") -> None:
        self.original = original
        self.samples = samples
        self.threads = threads
        self.judge = judge
        self.rows = [len(next(iter(feed.values()))) for feed in samples.feeds]
        session = open_session(original, threads=threads)
        self.names = [output.name for output in session.get_outputs()]
        raw = run_all(session, samples, role=role)
        self.time_major = {name: is_time_major(raw[0][name], self.rows[0]) for name in self.names}
        self.reference = self.split(raw)
        self.kinds = {name: kind_of(self.reference[name]) for name in self.names}
        self.accuracy_output = self.labelled_output()
        self.continuous = judge.continuous if judge.continuous is not None else not self.resolves(judge.budget_pp)
        self.baseline: Quality | None = None
        self.baseline = self.score(raw)

    def labelled_output(self) -> str | None:
        """The classifier output the labels score (one integer label per sample), if any."""
        labels = self.samples.labels
        if labels is None or labels.ndim != 1 or labels.dtype.kind not in "iu":
            return None
        return next((name for name in self.names if self.kinds[name] is OutputKind.CLASSES
                     and len(self.reference[name]) == len(labels)), None)

    def resolves(self, budget_pp: float) -> bool:
        """Whether the discrete figures the score would use can resolve `budget_pp` here."""
        if self.judge.metric is not None:
            return True
        return not self.discrete() or self.samples.rows() >= rows_needed(budget_pp)

    def discrete(self) -> bool:
        """Whether the score would be a discrete figure (accuracy, agreement)."""
        return self.accuracy_output is not None or any(kind in DISCRETE_KINDS for kind in self.kinds.values())

    def discrete_figure(self) -> str:
        if self.accuracy_output is not None:
            return "top-1 accuracy"
        kinds = {self.kinds[name] for name in self.names}
        return "sequence agreement" if OutputKind.SEQUENCE in kinds else "top-1 agreement"

    def continuous_figure(self) -> str:
        kinds = {self.kinds[name] for name in self.names}
        if OutputKind.SEQUENCE in kinds:
            return "the share of time steps whose top class is unchanged" + (
                " and the outputs' cosine similarity" if OutputKind.CLASSES in kinds else "")
        return "the outputs' cosine similarity"

    def split(self, raw: list[dict[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
        outputs: dict[str, list[np.ndarray]] = {name: [] for name in self.names}
        for result, rows in zip(raw, self.rows):
            for name in self.names:
                outputs[name].extend(split_samples(result[name], rows, time_major=self.time_major[name]))
        return outputs

    def evaluate(self, model: bytes | str) -> Quality:
        raw = run_all(open_session(model, threads=self.threads), self.samples, role="build")
        return self.score(raw)

    def score(self, raw: list[dict[str, np.ndarray]]) -> Quality:
        outputs = self.split(raw)
        exact = tuple(compare_output(name, self.kinds[name], self.reference[name], outputs[name], continuous=False)
                      for name in self.names)
        fidelities = exact if not self.continuous else tuple(
            compare_output(name, self.kinds[name], self.reference[name], outputs[name], continuous=True)
            for name in self.names)
        worst = min(fidelities, key=lambda f: f.figure_pct)
        cosine, snr = min(f.cosine for f in exact), min(f.snr_db for f in exact)
        agreement = next((f.figure_pct for f in exact if f.kind == OutputKind.CLASSES), None)
        accuracy, accuracy_allowance, accuracy_ceiling = self.accuracy(outputs)
        if self.judge.metric is not None:
            value = self.judge.metric.measure(raw, self.samples.labels)
            ceiling = value if self.baseline is None else self.baseline.score
            return Quality(value, f"metric:{self.judge.metric.name}", accuracy, agreement, cosine, snr, 0.0,
                           ceiling=ceiling, outputs=exact)
        if accuracy is not None and not self.continuous:
            return Quality(accuracy, "accuracy", accuracy, agreement, cosine, snr, accuracy_allowance,
                           ceiling=accuracy_ceiling, outputs=exact)
        return Quality(worst.figure_pct, metric_name(OutputKind(worst.kind), self.continuous), accuracy, agreement,
                       cosine, snr, worst.allowance_pp, outputs=exact)

    def accuracy(self, outputs: dict[str, list[np.ndarray]]) -> tuple[float | None, float, float]:
        """(top-1 accuracy, its allowance, the original's accuracy) of the labelled output."""
        if self.accuracy_output is None or self.samples.labels is None:
            return None, 0.0, 100.0
        labels = self.samples.labels
        reference = np.array([int(r.argmax()) for r in self.reference[self.accuracy_output]])
        predicted = np.array([int(c.argmax()) for c in outputs[self.accuracy_output]])
        correct, originally_correct = predicted == labels, reference == labels
        changed = int((originally_correct != correct).sum())
        return (100.0 * float(correct.mean()), classifier_allowance(changed, len(labels)),
                100.0 * float(originally_correct.mean()))

    def drop_pp(self, quality: Quality) -> float:
        return self.baseline.score - quality.score


def metric_name(kind: OutputKind, continuous: bool) -> str:
    if kind is OutputKind.MASK:
        return "mask_iou"
    if kind is OutputKind.SEQUENCE and continuous:
        return "step_agreement"
    if continuous or kind is OutputKind.TENSOR:
        return "cosine"
    return "agreement" if kind is OutputKind.CLASSES else "sequence_agreement"


def run_all(session: ort.InferenceSession, samples: SampleSet, *, role: str) -> list[dict[str, np.ndarray]]:
    """Every output of every feed, one run per feed. A feed the model cannot run is the
    user's sample not fitting the model (SampleError naming it) when `role` names a
    sample set; for a build ("build") it is the build's failure (RuntimeError)."""
    names = [output.name for output in session.get_outputs()]
    results = []
    for index, feed in enumerate(samples.feeds):
        try:
            values = session.run(names, feed)
        except Exception as error:  # onnxruntime's Fail / InvalidArgument / RuntimeException
            message = str(error).strip().splitlines()[-1][:300] if str(error).strip() else type(error).__name__
            if role == "build":
                raise RuntimeError(f"the build fails on sample {samples.name(index)}: {message}") from error
            shapes = {name: list(array.shape) for name, array in feed.items()}
            if role == "generated":
                raise SampleError(f"the model does not run on generated inputs (free dimensions set to 1: "
                                  f"{shapes}): {message}; pass --calibration DIR or --eval DIR with real "
                                  "samples") from error
            raise SampleError(f"{role} sample {samples.name(index)} (shapes {shapes}) does not run on the model: "
                              f"{message}; give samples of a size the model accepts") from error
        results.append({name: np.asarray(value) for name, value in zip(names, values)})
    return results


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None) -> Quality:
    """Quality of one output's `candidate` rows against the original's `reference` rows
    (and labels): the single-output case of `Evaluator.score`, kept for callers that
    hold stacked outputs."""
    kind = OutputKind.CLASSES if reference.ndim == 2 and reference.shape[1] >= 2 else OutputKind.TENSOR
    rows_ref, rows_new = list(reference), list(candidate)
    fidelity = compare_output("output", kind, rows_ref, rows_new, continuous=False)
    outputs = (fidelity,)
    if kind is OutputKind.TENSOR:
        return Quality(fidelity.figure_pct, "cosine", None, None, fidelity.cosine, fidelity.snr_db,
                       fidelity.allowance_pp, outputs=outputs)
    if labels is None:
        return Quality(fidelity.figure_pct, "agreement", None, fidelity.figure_pct, fidelity.cosine,
                       fidelity.snr_db, fidelity.allowance_pp, outputs=outputs)
    correct, originally_correct = candidate.argmax(1) == labels, reference.argmax(1) == labels
    accuracy = 100.0 * float(correct.mean())
    changed = int((originally_correct != correct).sum())
    return Quality(accuracy, "accuracy", accuracy, fidelity.figure_pct, fidelity.cosine, fidelity.snr_db,
                   classifier_allowance(changed, len(reference)), ceiling=100.0 * float(originally_correct.mean()),
                   outputs=outputs)


def classifier_allowance(changed: int, rows: int) -> float:
    """100 x sqrt(2 (changed + 1)) / rows points: one standard error of the difference
    between the drops on two halves of `rows` samples each, one changed sample added."""
    return 100.0 * float(np.sqrt(2.0 * (changed + 1))) / rows
