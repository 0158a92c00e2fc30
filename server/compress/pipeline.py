"""The compression pipeline: one model in, one measured build per level out.

    report = compress(Path("model.onnx"), Path("variants/"), CompressConfig(levels=("balanced",)))

Writes `<level>.onnx` (or `smallest.fcpack`) per level and `report.json`, `report.md`,
`report.png` into `out_dir`, which must be new or empty. Everything is built in a
sibling staging directory and renamed into place at the end, so a failed run leaves
nothing in `out_dir`. Raises InputError (see `errors`) for unusable input; a level
that cannot be built is reported with its `error` and the others are still built.
When no level could be built the run has failed: AllLevelsFailedError carries the
report, and nothing is written.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import onnx
import onnxruntime as ort

from fleetcast.server.compress import package
from fleetcast.server.compress.clock import DEFAULT_TIME_LIMIT_S, SearchClock
from fleetcast.server.compress.errors import AllLevelsFailedError, LevelError, NothingToBuildError, OutputDirError
from fleetcast.server.compress.levels import ALL_LEVELS, NEEDS_CALIBRATION, parse_levels
from fleetcast.server.compress.measure import (
    Evaluator,
    Judge,
    LatencyConfig,
    Quality,
    measure_latency_ms,
    measure_latency_pair_ms,
    open_session,
    rows_needed,
    run_all,
)
from fleetcast.server.compress.advice import machine_class, recommend, slower_notes
from fleetcast.server.compress.metric import TaskMetric, load_metric
from fleetcast.server.compress.normalize import check_runnable, load_model, normalize, optimize_graph
from fleetcast.server.compress.quantize import Method
from fleetcast.server.compress.recipes import BUILDERS, Build, BuildContext
from fleetcast.server.compress.samples import Feed, InputSpec, SampleSet, input_specs, load_samples, synthetic_feed

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class CompressConfig:
    levels: tuple[str, ...] = ALL_LEVELS
    budget_pp: float = 1.0                    # allowed accuracy (or fidelity) drop, percentage points
    calibration_dir: Path | None = None
    eval_dir: Path | None = None
    intra_op_threads: int = 1                 # threads for the quality runs (latency runs use 1 and 2)
    max_calibration_samples: int = 128
    max_eval_samples: int = 2000
    calibration_methods: tuple[str, ...] = tuple(method.value for method in Method)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    time_limit_s: float = DEFAULT_TIME_LIMIT_S  # for all the searches together (clock.py)
    metric: str | None = None                 # "module:function" scoring outputs and labels (metric.py)

    def __post_init__(self) -> None:
        parse_levels(",".join(self.levels))   # raises ValueError naming an unknown level
        for name in self.calibration_methods:
            Method(name)
        if not self.budget_pp >= 0:
            raise ValueError(f"budget must be >= 0 percentage points, got {self.budget_pp}")
        if not self.time_limit_s > 0:
            raise ValueError(f"time limit must be > 0 seconds, got {self.time_limit_s}")
        if self.intra_op_threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.intra_op_threads}")


@dataclass(frozen=True)
class LevelResult:
    level: str
    path: Path | None                         # None when the level could not be built
    format: str | None                        # "onnx" | "fcpack"
    size_bytes: int | None = None             # the ONNX model the device runs
    packed_bytes: int | None = None           # transport size: fcpack (zstd) of that model, or the fcpack artifact
    latency_ms_1t: float | None = None
    latency_ms_2t: float | None = None
    latency_ratio: float | None = None        # 1 thread, / the original's timed in alternation with it
    latency_ratio_2t: float | None = None
    size_ratio: float | None = None           # size_bytes / original file
    packed_ratio: float | None = None         # packed_bytes / original file
    metric: str | None = None                 # measure.Quality.metric
    accuracy_pct: float | None = None         # top-1 with labels
    agreement_pct: float | None = None        # top-1 agreement with the original (classifiers)
    cosine: float | None = None
    snr_db: float | None = None
    score: float | None = None                # the figure the budget is judged by (measure.Quality.score)
    drop_pp: float | None = None              # baseline score - this level's score
    within_budget: bool | None = None
    recipe: Mapping[str, object] = field(default_factory=dict)
    error: str | None = None
    outputs: tuple[Mapping[str, object], ...] = ()   # per output: kind, cosine, SNR, figure (fidelity.py)

    def to_json(self) -> dict:
        document = asdict(self)
        document["path"] = str(self.path) if self.path else None
        document["recipe"] = dict(self.recipe)
        document["outputs"] = [dict(output) for output in self.outputs]
        return document


@dataclass(frozen=True)
class CompressionReport:
    model: str
    original: LevelResult
    levels: list[LevelResult]
    quality_data: str                         # what the quality figures were measured on
    budget_pp: float
    notes: list[str]
    machine: Mapping[str, str]
    recommendations: Mapping[str, Mapping[str, object]] = field(default_factory=dict)  # advice.py

    def to_json(self) -> dict:
        return {"fleetcast_compression_report": 1, "model": self.model, "budget_pp": self.budget_pp,
                "quality_data": self.quality_data, "notes": list(self.notes), "machine": dict(self.machine),
                "recommendations": {k: dict(v) for k, v in self.recommendations.items()},
                "original": self.original.to_json(), "levels": [level.to_json() for level in self.levels]}

    def built(self) -> list[LevelResult]:
        return [level for level in self.levels if level.error is None]


def compress(model_path: Path, out_dir: Path, config: CompressConfig,
             progress: Progress | None = None) -> CompressionReport:
    """Build and measure every level in `config.levels`; see the module docstring."""
    say = progress or (lambda _: None)
    model_path, out_dir = Path(model_path), Path(out_dir)
    check_out_dir(out_dir)
    metric = load_metric(config.metric) if config.metric else None
    say("loading model")
    model = load_model(model_path)
    check_runnable(model, model_path)
    specs = input_specs(model)
    calibration = load_optional(config.calibration_dir, specs, "calibration", config.max_calibration_samples)
    evaluation = load_optional(config.eval_dir, specs, "evaluation", config.max_eval_samples)
    check_buildable(config.levels, calibration)
    if calibration is not None:
        say("checking the calibration samples run on the model")
        run_all(open_session(model.SerializeToString(), threads=config.intra_op_threads), calibration,
                role="calibration")
    if metric is not None and (evaluation is None or evaluation.labels is None):
        say("note: --metric is given without an evaluation directory with labels.npy: it receives labels=None")
    created = missing_parents(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="fleetcast-compress-") as workdir:
            report = build_all(model, model_path, calibration, evaluation, config, staging, out_dir,
                               Path(workdir), say, metric)
        if not report.built():
            raise AllLevelsFailedError(failure_message(report.levels, out_dir), report)
        from fleetcast.server.compress.report import write_reports

        say("writing report")
        write_reports(report, staging)
        publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_empty(created)
        raise
    return report


def failure_message(levels: list[LevelResult], out_dir: Path) -> str:
    """One line for a run that built nothing: each reason once, with the levels it stopped."""
    levels_by_reason: dict[str, list[str]] = {}
    for level in levels:
        levels_by_reason.setdefault(level.error or "not built", []).append(level.level)
    reasons = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in levels_by_reason.items())
    return f"none of the requested levels could be built, so nothing was written to {out_dir} ({reasons})"


def missing_parents(out_dir: Path) -> list[Path]:
    """The directories above `out_dir` that do not exist yet, deepest first."""
    return [parent for parent in out_dir.absolute().parents if not parent.exists()]


def remove_empty(directories: list[Path]) -> None:
    """Remove the directories a failed run created, deepest first, while they are empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


def check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"--out {out_dir} is a file, not a directory; pass a new or empty directory")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputDirError(f"output directory {out_dir} already exists and is not empty; "
                             "pass a new or empty directory with --out")


def check_buildable(levels: tuple[str, ...], calibration: SampleSet | None) -> None:
    """Refuse a run that could build none of `levels` for want of calibration samples."""
    if calibration is None and all(level in NEEDS_CALIBRATION for level in levels):
        raise NothingToBuildError(f"--levels {','.join(levels)} needs calibration samples and none were given; "
                                  "pass --calibration DIR (one .npz or .npy per sample), or add a data-free "
                                  "level (lossless, fp16)")


def load_optional(directory: Path | None, specs: tuple[InputSpec, ...], role: str, limit: int) -> SampleSet | None:
    return None if directory is None else load_samples(Path(directory), specs, role=role, max_samples=limit)


def build_all(model: onnx.ModelProto, model_path: Path, calibration: SampleSet | None,
              evaluation: SampleSet | None, config: CompressConfig, staging: Path, out_dir: Path,
              workdir: Path, say: Progress, metric: TaskMetric | None = None) -> CompressionReport:
    search, held_out, data_notes = split_quality_data(evaluation, calibration, input_specs(model), config.budget_pp)
    probe = search.feeds[:4]
    original_bytes = model.SerializeToString()
    say("measuring the original")    # runs every sample first: one that does not fit is named before any work
    judge = Judge(budget_pp=config.budget_pp, metric=metric)
    role = "evaluation" if evaluation is not None else "calibration" if calibration is not None else "generated"
    evaluator = Evaluator(original_bytes, search, threads=config.intra_op_threads, judge=judge, role=role)
    scorer = evaluator if held_out is search else Evaluator(
        original_bytes, held_out, threads=config.intra_op_threads,
        judge=replace(judge, continuous=evaluator.continuous), role=role)
    data_notes += judging_notes(evaluator, held_out, config.budget_pp, say)
    base, notes = normalize(model, probe, say)
    notes = [*data_notes, *notes]
    try:
        say("lossless: optimizing graph")
        base = optimize_graph(base, probe)
        # The same steps as onnxruntime's quant_pre_process (symbolic shape inference,
        # basic optimizations); the mark tells its quantizer so.
        onnx.helper.set_model_props(base, {"onnx.quant.pre_process": "onnxruntime.quant"})
    except Exception as error:  # onnxruntime or the output check: keep the normalized model
        notes.append(f"graph optimization skipped: {error}")
    base_path = workdir / "base.onnx"
    onnx.save(base, str(base_path))
    latency_feed = {name: array[:1] for name, array in search.feeds[0].items()}
    if search.varying_shapes():
        notes.append(f"samples differ in shape: each ran on its own and fidelity is averaged over samples; "
                     f"latency is timed on the first one ({shapes_text(latency_feed)})")
    original = measure_original(model_path, original_bytes, scorer, latency_feed, config)
    if calibration is None and any(level in NEEDS_CALIBRATION for level in config.levels):
        notes.append("no calibration data given: only the data-free levels (lossless, fp16) were built")
    clock = SearchClock(config.time_limit_s)
    context = BuildContext(base=base, base_path=base_path, workdir=workdir, calibration=calibration,
                           evaluator=evaluator, budget_pp=config.budget_pp, methods=config.calibration_methods,
                           latency=config.latency, clock=clock)
    results = []
    for index, level in enumerate(config.levels, 1):
        def step(text: str, level: str = level, index: int = index) -> None:
            say(f"[{index}/{len(config.levels)}] {level}: {text} ({clock.left_s():.0f} s of search time left)")
        results.append(build_level(level, context, scorer, original, latency_feed, config, staging, out_dir, step))
    if clock.cut_short:
        notes.append(f"the time limit ({config.time_limit_s:g} s, --time-limit) ran out during the "
                     f"{', '.join(clock.cut_short)}: the best choice measured by then was kept (recipes say "
                     "time_limit_reached); raise --time-limit for a fuller search")
    notes += slower_notes(results)
    advice = recommend(results, config.budget_pp, measured_class=machine_class())
    return CompressionReport(model=str(model_path), original=original, levels=results,
                             quality_data=describe(held_out, search), budget_pp=config.budget_pp, notes=notes,
                             machine={"cpu": platform.processor() or platform.machine(),
                                      "hardware_class": machine_class(),
                                      "onnxruntime": ort.__version__, "python": platform.python_version()},
                             recommendations=advice)


def judging_notes(evaluator: Evaluator, held_out: SampleSet, budget_pp: float, say: Progress) -> list[str]:
    """What the report says of the figure the budget is judged by; said at the start too."""
    rows, needed = evaluator.samples.rows(), rows_needed(budget_pp)
    notes = []
    if evaluator.continuous:
        notes.append(f"{rows} samples cannot resolve a {budget_pp:g}-point budget by {evaluator.discrete_figure()} "
                     f"(one sample moves it by {100.0 / rows:.2f} points; at least {needed} are needed): the "
                     f"searches and this report judge by {evaluator.continuous_figure()} instead, and still show "
                     f"{evaluator.discrete_figure()}")
    elif evaluator.judge.metric is None and evaluator.discrete() and held_out.rows() < needed:
        notes.append(f"too few evaluation samples to resolve a {budget_pp:g} point budget: one held-out sample "
                     f"moves a figure by {100.0 / held_out.rows():.2f} points; give at least {needed} "
                     "evaluation samples")
    for note in notes:
        say(f"note: {note}")
    return notes


def shapes_text(feed: Feed) -> str:
    return ", ".join(f"{name} {list(array.shape)}" for name, array in feed.items())


def split_quality_data(evaluation: SampleSet | None, calibration: SampleSet | None, specs: tuple[InputSpec, ...],
                       budget_pp: float) -> tuple[SampleSet, SampleSet, list[str]]:
    """(search, held_out, notes): the searches score on `search`, the report on `held_out`.
    An evaluation set is split (SampleSet.split); without one, both are the same samples."""
    if evaluation is None:
        samples = calibration or SampleSet(tuple(synthetic_feed(specs, seed=s) for s in range(8)),
                                           None, Path("(random inputs)"))
        return samples, samples, [f"no evaluation data: the searches and this report both used {samples.source}, "
                                  "so quality figures are optimistic; pass --eval DIR for held-out figures"]
    validation, held_out = evaluation.split()
    if held_out is validation:
        return validation, held_out, ["one evaluation sample cannot be split: the searches and this report used "
                                      "the same sample, so quality figures are optimistic"]
    weight_pp = 100.0 / held_out.rows()
    notes = [f"quality figures are measured on {held_out.rows()} held-out samples (the odd-numbered evaluation "
             f"files by name); the searches scored only on the other {validation.rows()}. One held-out sample "
             f"is {weight_pp:.2f} points"]
    return validation, held_out, notes


def measure_original(model_path: Path, data: bytes, evaluator: Evaluator, feed: Feed,
                     config: CompressConfig) -> LevelResult:
    size = model_path.stat().st_size
    packed = len(package.encode(data))
    latency_1t = measure_latency_ms(data, feed, threads=1, config=config.latency)
    latency_2t = measure_latency_ms(data, feed, threads=2, config=config.latency)
    return quality_fields(LevelResult("original", model_path, "onnx", size, packed, latency_1t, latency_2t,
                                      1.0, 1.0, 1.0, packed / size), evaluator.baseline, 0.0, None)


def build_level(level: str, context: BuildContext, scorer: Evaluator, original: LevelResult, feed: Feed,
                config: CompressConfig, staging: Path, out_dir: Path, say: Progress) -> LevelResult:
    started = time.monotonic()
    try:
        build = BUILDERS[level](context, say)
        say("measuring")
        name = f"{level}.{build.format}"
        write_file(staging / name, build.artifact)
        result = measure_build(level, build, out_dir / name, context, scorer, original, feed, config)
    except LevelError as error:
        logger.warning("level=%s not built: %s", level, error)
        return LevelResult(level, None, None, error=str(error))
    except Exception as error:  # an unexpected failure of one level must not stop the others
        logger.exception("level=%s failed", level)
        return LevelResult(level, None, None, error=f"{type(error).__name__}: {error}")
    logger.info("level=%s built in %.1fs", level, time.monotonic() - started)
    return result


def measure_build(level: str, build: Build, path: Path, context: BuildContext, scorer: Evaluator,
                  original: LevelResult, feed: Feed, config: CompressConfig) -> LevelResult:
    """Size and latency of the build, and its quality on the held-out samples (`scorer`)."""
    size = len(build.runnable)
    packed = len(build.artifact) if build.format == "fcpack" else len(package.encode(build.runnable))
    reference_1t, latency_1t = measure_latency_pair_ms(context.evaluator.original, build.runnable, feed,
                                                       threads=1, config=config.latency)
    reference_2t, latency_2t = measure_latency_pair_ms(context.evaluator.original, build.runnable, feed,
                                                       threads=2, config=config.latency)
    quality = scorer.evaluate(build.runnable)
    drop = scorer.drop_pp(quality)
    result = LevelResult(level, path, build.format, size, packed, latency_1t, latency_2t,
                         latency_1t / reference_1t, latency_2t / reference_2t,
                         size / original.size_bytes, packed / original.size_bytes, recipe=build.recipe)
    return quality_fields(result, quality, drop, drop <= config.budget_pp + 1e-9)


def quality_fields(result: LevelResult, quality: Quality, drop: float, within: bool | None) -> LevelResult:
    return replace(result, metric=quality.metric, score=quality.score, accuracy_pct=quality.accuracy_pct,
                   agreement_pct=quality.agreement_pct, cosine=quality.cosine, snr_db=quality.snr_db,
                   drop_pp=drop, within_budget=within, outputs=tuple(o.to_json() for o in quality.outputs))


def describe(held_out: SampleSet, search: SampleSet) -> str:
    kind = "labelled" if held_out.labels is not None else "unlabelled"
    if held_out is search:
        return f"{held_out.rows()} {kind} samples from {held_out.source} (also used by the searches)"
    return f"{held_out.rows()} held-out {kind} samples from {held_out.source} (the searches used {search.rows()} others)"


def write_file(path: Path, data: bytes) -> None:
    """Write and fsync (the whole staging directory is renamed into place later)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def publish(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        out_dir.rmdir()                       # checked empty at the start
    os.replace(staging, out_dir)
    directory = os.open(out_dir.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

