"""The recipe behind each level: how a build is made from the normalized model.

Each builder returns a `Build`: the artifact bytes, its format, the ONNX bytes a
device would run (for fcpack, the decoded model), and what was chosen. A builder
raises LevelError when its level cannot be built; the other levels go on.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import onnx
from onnx import numpy_helper

from fleetcast.server.compress import compensate, package
from fleetcast.server.compress.clock import SearchClock
from fleetcast.server.compress.errors import LevelError, NormalizationError
from fleetcast.server.compress.layout import SPACE_TO_DEPTH, space_to_depth
from fleetcast.server.compress.measure import (
    Evaluator,
    LatencyConfig,
    Quality,
    measure_latency_pair_ms,
    measure_latency_ratio,
)
from fleetcast.server.compress.normalize import assert_unchanged, outputs_of
from fleetcast.server.compress.prune import SPARSITY_STEPS, prunable_weights
from fleetcast.server.compress.quantize import (
    Activations,
    Int8Quantizer,
    Method,
    check_finite_weights,
    int8_weights_only,
    weighted_layers,
)
from fleetcast.server.compress.samples import SampleSet
from fleetcast.server.compress.sensitivity import choose_float_layers, choose_per_layer
from fleetcast.server.compress.weight_sharing import ENTRY_STEPS

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

# Two builds timed against each other count as equally fast within 3 %; then the
# smaller (int8 weights) or the long-measured default (uint8 activations) is kept.
SLOWER_TOLERANCE: Final = 1.03


@dataclass(frozen=True)
class Build:
    artifact: bytes
    format: str                      # "onnx" | "fcpack"
    runnable: bytes                  # ONNX bytes the device runs
    recipe: Mapping[str, object] = field(default_factory=dict)


@dataclass
class BuildContext:
    """What every builder may use; the INT8 activation type, layout (space-to-depth)
    and calibration method choices are shared by balanced and fastest."""

    base: onnx.ModelProto            # normalized, graph-optimized FP32
    base_path: Path
    workdir: Path
    calibration: SampleSet | None
    evaluator: Evaluator             # scores on the validation samples against the original
    budget_pp: float
    methods: tuple[str, ...]
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    clock: SearchClock = field(default_factory=SearchClock)
    method_scores: dict[str, float] = field(default_factory=dict)
    quantizer: Int8Quantizer | None = None
    activations: Activations | None = None
    activation_ms: dict[str, float] = field(default_factory=dict)
    int8_failure: str | None = None  # why the whole model did not quantize: fastest is not tried again
    rewritten_convolutions: tuple[str, ...] = ()   # given space-to-depth (layout.py) in the INT8 levels
    plain_quantizer: Int8Quantizer | None = None    # of the model without it, once `quantizer` has it
    layout_ms: dict[str, float] = field(default_factory=dict)

    def floor(self) -> float:
        """The searches accept a choice when its validation score minus its confidence
        allowance (`Quality.guarded_score`) is at least this."""
        return self.evaluator.baseline.score - self.budget_pp

    def validation_fields(self, quality: Quality) -> dict[str, object]:
        """What the recipe records of the search's own figure and its safety margin."""
        drop = self.evaluator.baseline.score - quality.score
        return {"validation_drop_pp": round(drop, 3), "validation_allowance_pp": round(quality.allowance_pp, 3),
                "searched_within_pp": round(self.evaluator.baseline.score - quality.guarded_score, 3)}

    def int8(self) -> Int8Quantizer:
        if self.calibration is None:
            raise LevelError("this level needs calibration samples and none were given; "
                             "pass --calibration DIR (.npz or .npy files, one sample each)")
        if self.quantizer is None:
            check_finite_weights(self.base)
            self.quantizer = Int8Quantizer(self.base_path, self.calibration, self.workdir)
        return self.quantizer

    def int8_for(self, keep_float: tuple[str, ...]) -> Int8Quantizer:
        """The quantizer of a build that keeps `keep_float` float: space-to-depth pays
        only in INT8 (in float it ran slower), so such a build of a rewritten
        convolution quantizes the model without the rewrite."""
        if self.plain_quantizer is not None and set(keep_float) & set(self.rewritten_convolutions):
            return self.plain_quantizer
        return self.int8()

    def latency_feed(self) -> dict[str, np.ndarray]:
        """One batch-1 sample for timing builds against each other."""
        return {name: array[:1] for name, array in self.evaluator.samples.feeds[0].items()}

    def fast_activations(self, progress: Progress) -> Activations:
        """The activation type onnxruntime runs faster on this machine: the whole model
        in INT8 with uint8 and with int8 activations, timed in alternating rounds at one
        thread. uint8 (fast with VNNI) is kept unless int8 is faster by more than the
        timing tolerance, or int8 cannot be built. Then, in that type, whether narrow
        strided convolutions get space-to-depth (`choose_layout`)."""
        if self.int8_failure is not None:
            raise LevelError(self.int8_failure)
        if self.activations is None:
            method = Method(self.methods[0])
            progress(f"timing uint8 and int8 activations ({method})")
            try:
                uint8 = self.int8().quantize(method, activations=Activations.UINT8)
            except LevelError as error:
                self.int8_failure = str(error)
                raise
            try:
                int8 = self.int8().quantize(method, activations=Activations.INT8)
            except LevelError as error:
                logger.info("int8 activations not built, keeping uint8: %s", error)
                self.activations = Activations.UINT8
                self.choose_layout(method, uint8, progress)
                return self.activations
            uint8_ms, int8_ms = measure_latency_pair_ms(uint8, int8, self.latency_feed(), threads=1,
                                                        config=self.latency)
            self.activation_ms = {"uint8": uint8_ms, "int8": int8_ms}
            self.activations = Activations.INT8 if int8_ms * SLOWER_TOLERANCE < uint8_ms else Activations.UINT8
            logger.info("activations uint8=%.3fms int8=%.3fms: %s", uint8_ms, int8_ms, self.activations)
            self.choose_layout(method, int8 if self.activations is Activations.INT8 else uint8, progress)
        return self.activations

    def choose_layout(self, method: Method, plain: bytes, progress: Progress) -> None:
        """Quantize the model with its narrow stride-2 convolutions rewritten as
        space-to-depth (`layout.py`) and time it against `plain`, the same model as it
        was, in alternating rounds at one thread, three times (`measure_latency_ratio`);
        the levels quantize the rewritten model from then on only when the median ratio
        is below 1 by more than the timing tolerance."""
        rewritten, convolutions = space_to_depth(self.base)
        if not convolutions:
            return
        progress(f"timing INT8 with {len(convolutions)} strided convolution(s) as space-to-depth")
        probe = (self.latency_feed(),)
        try:
            assert_unchanged(outputs_of(self.base, probe), rewritten, probe, step="space-to-depth")
        except NormalizationError as error:
            logger.warning("space-to-depth not used: %s", error)
            return
        path = self.workdir / "base-space-to-depth.onnx"
        onnx.save(rewritten, str(path))
        workdir = self.workdir / "space-to-depth"   # its own calibration cache: the model has other tensors
        workdir.mkdir(exist_ok=True)
        candidate = Int8Quantizer(path, self.int8().calibration, workdir,
                                  always_float=tuple(f"{name}{SPACE_TO_DEPTH}" for name in convolutions))
        try:
            candidate_bytes = candidate.quantize(method, activations=self.activations or Activations.UINT8)
        except LevelError as error:
            logger.info("space-to-depth model not quantized, keeping the plain one: %s", error)
            return
        plain_ms, rewritten_ms, ratio = measure_latency_ratio(plain, candidate_bytes, self.latency_feed(),
                                                              threads=1, config=self.latency)
        self.layout_ms = {"plain": plain_ms, "space_to_depth": rewritten_ms, "ratio": ratio}
        logger.info("layout plain=%.3fms space_to_depth=%.3fms ratio=%.3f", plain_ms, rewritten_ms, ratio)
        if ratio * SLOWER_TOLERANCE < 1.0:
            self.plain_quantizer, self.quantizer = self.int8(), candidate
            self.rewritten_convolutions = convolutions

    def int8_fields(self, method: Method, keep_float: tuple[str, ...] = ()) -> dict[str, object]:
        """What the recipe of an INT8 level records of the shared choices."""
        rewritten = [] if self.int8_for(keep_float) is self.plain_quantizer else list(self.rewritten_convolutions)
        return {"activation_type": str(self.activations), "calibration_method": str(method),
                "activation_latency_ms": {k: round(v, 6) for k, v in self.activation_ms.items()},
                "space_to_depth": rewritten,
                "layout_latency_ms": {k: round(v, 6) for k, v in self.layout_ms.items()},
                "method_scores": {k: round(v, 3) for k, v in self.method_scores.items()}}

    def best_method(self, progress: Progress) -> Method:
        """Try each calibration method on the whole model once, in the fast activation
        type; keep the best scoring."""
        activations = self.fast_activations(progress)
        failures = []
        for index, name in enumerate(self.methods, 1):
            if name in self.method_scores:
                continue
            if (self.method_scores or failures) and self.clock.stop("calibration method choice"):
                break
            progress(f"calibrating {index}/{len(self.methods)} method {name}")
            try:
                model = self.int8().quantize(Method(name), activations=activations)
            except LevelError as error:
                failures.append(str(error))
                continue
            self.method_scores[name] = self.evaluator.evaluate(model).score
        if not self.method_scores:
            raise LevelError("; ".join(failures))
        return Method(max(self.method_scores, key=lambda name: self.method_scores[name]))


def build_lossless(context: BuildContext, progress: Progress) -> Build:
    data = context.base.SerializeToString()
    return Build(data, "onnx", data, {"transforms": "normalized, onnxruntime basic graph optimizations"})


def build_fp16(context: BuildContext, progress: Progress) -> Build:
    from onnxconverter_common import float16

    progress("converting weights to float16")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # one warning per weight clipped to float16's range
            model = float16.convert_float_to_float16(context.base, keep_io_types=True)
    except Exception as error:  # the converter raises plain exceptions on odd graphs
        raise LevelError(f"onnxconverter-common could not convert to float16: {error}") from error
    data = model.SerializeToString()
    return Build(data, "onnx", data, {"io_types": "float32"})


def build_fastest(context: BuildContext, progress: Progress) -> Build:
    method = context.best_method(progress)
    progress(f"quantizing every layer ({method})")
    data = context.int8().quantize(method, activations=context.fast_activations(progress))
    return Build(data, "onnx", data, {**context.int8_fields(method), "float_layers": []})


def build_balanced(context: BuildContext, progress: Progress) -> Build:
    """INT8 with the most sensitive layers' activations kept float. Those layers still
    store int8 weights behind a DequantizeLinear (weight-only QDQ), and the search
    scores them that way, so the file shrinks even where activations stay float,
    unless onnxruntime runs the model slower with them (`int8_weights_slower`)."""
    method = context.best_method(progress)
    layers = weighted_layers(context.base)
    latest: dict[tuple[str, ...], bytes] = {}

    def quantized(keep_float: tuple[str, ...]) -> bytes:
        if keep_float not in latest:
            latest.clear()  # the search usually ends on its latest build: keep only that one
            latest[keep_float] = context.int8_for(keep_float).quantize(
                method, keep_float=keep_float, activations=context.fast_activations(progress))
        return latest[keep_float]

    def score_of(keep_float: tuple[str, ...]) -> float:
        return context.evaluator.evaluate(int8_weights_only(quantized(keep_float), keep_float)).guarded_score

    choice = choose_float_layers(score_of, layers, context.floor(), progress,
                                 stop=lambda: context.clock.stop("balanced layer search"))
    float32_weights = int8_weights_slower(context, quantized(choice.keep_float), choice.keep_float, progress)
    chosen = int8_weights_only(quantized(choice.keep_float), () if float32_weights else choice.keep_float)
    quality = context.evaluator.evaluate(chosen)
    recipe = {**context.int8_fields(method, choice.keep_float), "float_layers": list(choice.keep_float),
              "quantized_layers": len(layers) - len(choice.keep_float),
              "float_layer_weights": "float32" if float32_weights else "int8",
              "budget_met": quality.guarded_score >= context.floor(), "time_limit_reached": choice.timed_out,
              **context.validation_fields(quality),
              "sensitivity_pp": {name: round(gain, 3) for name, gain in choice.sensitivity.items()}}
    return Build(chosen, "onnx", chosen, recipe)


def int8_weights_slower(context: BuildContext, quantized: bytes, keep_float: tuple[str, ...],
                        progress: Progress) -> bool:
    """Whether onnxruntime runs the whole model measurably slower with the float
    layers' weights in weight-only int8 than in float32; if so, all keep float32.

    The two forms are timed as whole models, in alternating rounds. Timing each layer
    on its own, with a tolerance each, let many small slowdowns through: on MobileNetV2
    with 53 float layers they added up to 2.5 times the FP32 latency.
    """
    if not keep_float:
        return False
    progress(f"timing the {len(keep_float)} float layer(s) with int8 and with float32 weights")
    float_ms, int8_ms = measure_latency_pair_ms(quantized, int8_weights_only(quantized, keep_float),
                                                context.latency_feed(), threads=1, config=context.latency)
    logger.info("float layers=%d weights float32=%.3fms int8=%.3fms", len(keep_float), float_ms, int8_ms)
    return int8_ms > SLOWER_TOLERANCE * float_ms


def build_smallest(context: BuildContext, progress: Progress) -> Build:
    """Per-layer weight sharing, then per-layer pruning on top of it, each layer
    error-compensated (`compensate.py`), both searched against the whole budget.

    Sharing goes first because it is the larger factor (a 4-entry codebook stores a
    weight in 2 bits where float32 takes 32; pruning saves only what the mask and
    zstd recover), so it gets first claim on the budget. Pruning used to go first
    against half the budget; with the searches' safety allowance, that half is
    smaller than the allowance of a choice that changes nothing unless the
    validation half holds about 283 samples (100 x sqrt(2) / n <= 0.5), so on
    digits no layer could be pruned at all.
    """
    if context.calibration is None:
        raise LevelError("smallest needs samples to check its accuracy budget and none were given; "
                         "pass --calibration DIR")
    names = prunable_weights(context.base)
    shapes = compensate.layer_shapes(context.base, names)
    statistics = compensate.collect_statistics(context.base, shapes, context.calibration.feeds,
                                               threads=context.evaluator.threads, progress=progress)
    planner = WeightPlanner(context.base, shapes, statistics)

    def score_sharing(plan: Mapping[str, int | None]) -> float:
        return context.evaluator.evaluate(with_weights(context.base, planner.apply({}, plan))).guarded_score

    sharing = choose_per_layer(score_sharing, {n: (*ENTRY_STEPS, None) for n in names}, {n: None for n in names},
                               context.floor(), progress, step="weight sharing",
                               stop=lambda: context.clock.stop("smallest weight-sharing search"))
    entries = sharing.options

    def score_sparsity(plan: Mapping[str, float]) -> float:
        return context.evaluator.evaluate(with_weights(context.base, planner.apply(plan, entries))).guarded_score

    pruning = choose_per_layer(score_sparsity, {n: SPARSITY_STEPS for n in names}, {n: 0.0 for n in names},
                               context.floor(), progress, step="pruning",
                               stop=lambda: context.clock.stop("smallest pruning search"))
    sparsity = pruning.options
    progress("packing (zstd)")
    model = with_weights(context.base, planner.apply(sparsity, entries))
    artifact = package.encode(model)
    recipe = {"sparsity": {n: sparsity[n] for n in names}, "codebook_entries": {n: entries[n] for n in names},
              "compensation": {"method": "OBS (SparseGPT/GPTQ-style) with bias correction",
                               "calibration_rows": context.calibration.rows(), "damping": compensate.DAMPING,
                               "uncompensated_layers": sorted(n for n in names if n not in shapes)},
              "package": "fcpack v1", "time_limit_reached": sharing.timed_out or pruning.timed_out,
              **context.validation_fields(context.evaluator.evaluate(model))}
    return Build(artifact, "fcpack", package.decode(artifact), recipe)


class WeightPlanner:
    """Pruned and shared versions of the weights (and their corrected biases), each
    computed once per (layer, option): the searches revisit the same options many
    times. Layers in `shapes` are error-compensated on their calibration inputs
    (`compensate.py`); the others are pruned by magnitude and shared by plain k-means."""

    def __init__(self, model: onnx.ModelProto, shapes: Mapping[str, compensate.LayerShape],
                 statistics: Mapping[str, compensate.InputStatistics]) -> None:
        self.tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.shapes = shapes
        self.statistics = statistics
        self.cache: dict[tuple[str, float, int | None], dict[str, np.ndarray]] = {}

    def apply(self, sparsity: Mapping[str, float], entries: Mapping[str, int | None]) -> dict[str, np.ndarray]:
        changed: dict[str, np.ndarray] = {}
        for name in set(sparsity) | set(entries):
            changed.update(self.layer(name, sparsity.get(name, 0.0), entries.get(name)))
        return changed

    def layer(self, name: str, sparsity: float, entries: int | None) -> dict[str, np.ndarray]:
        """The tensors this option changes: the weight, and the bias it corrects."""
        key = (name, sparsity, entries)
        if key not in self.cache:
            self.cache[key] = self.compute(name, sparsity, entries)
        return self.cache[key]

    def compute(self, name: str, sparsity: float, entries: int | None) -> dict[str, np.ndarray]:
        if sparsity == 0.0 and entries is None:
            return {}
        shape = self.shapes.get(name)
        if shape is None:
            return {name: compensate.plain_layer(self.tensors[name], sparsity, entries)}
        bias = self.tensors[shape.bias_name] if shape.bias_name else None
        result = compensate.compensated_layer(shape, self.tensors[name], bias, self.statistics[name],
                                              sparsity, entries)
        changed = {name: result.weight}
        if shape.bias_name and result.bias is not None:
            changed[shape.bias_name] = result.bias
        return changed


def with_weights(model: onnx.ModelProto, changed: Mapping[str, np.ndarray]) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.name in changed:
            tensor.CopyFrom(numpy_helper.from_array(changed[tensor.name].astype(numpy_helper.to_array(tensor).dtype),
                                                    tensor.name))
    return copy.SerializeToString()


BUILDERS: Mapping[str, Callable[[BuildContext, Progress], Build]] = {
    "lossless": build_lossless,
    "fp16": build_fp16,
    "balanced": build_balanced,
    "fastest": build_fastest,
    "smallest": build_smallest,
}
