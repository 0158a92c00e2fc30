"""Error-compensated pruning and weight sharing for the `smallest` level.

Zeroing a weight, or moving it to the nearest codebook entry, changes the layer's
output by `(w - q) x` for every input `x`. Magnitude pruning and plain k-means pick
the change with the smallest `|w - q|`, blind to the inputs. Here each layer's
change is chosen and compensated on the calibration samples, as the Optimal Brain
Surgeon does and as SparseGPT and GPTQ apply it one layer at a time, without
retraining:

- the layer's inputs give `H = E[x x^T]` (for a convolution, over every patch its
  kernel sees), dampened by a fraction of its mean diagonal so it inverts even
  when the samples do not span the input space;
- the weights to zero are those with the smallest saliency `w^2 / [H^-1]_jj^2`
  (the output error their removal costs once the rest compensates); weights
  whose input was zero in every calibration sample go first;
- the input columns are then processed in order: each column's weights are zeroed
  where masked and set to their nearest codebook entry elsewhere, and the error
  this causes is spread over the columns not yet processed, in proportion to
  `H^-1` (the least-squares compensation);
- finally the bias absorbs the mean output shift left over,
  `b += (W - W') E[x]` (bias correction).

The result holds exactly the zeros asked for and at most `entries` other distinct
values, so the fcpack package stores it as compactly as before. A layer is
compensated with the original model's inputs (not those of the already-compressed
layers before it), so each (layer, sparsity, entries) choice is computed once and
the per-layer searches can combine choices freely.

No library the field keeps does this on ONNX models with numpy alone (SparseGPT and
GPTQ are PyTorch research code for transformers), hence this module. Layers it does
not handle (3-D convolutions, ConvTranspose, weights shared between nodes) fall back
to plain magnitude pruning and k-means (`plain_layer`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import onnx
from onnx import numpy_helper

from fleetcast.server.compress.measure import open_session
from fleetcast.server.compress.prune import prune
from fleetcast.server.compress.samples import Feed
from fleetcast.server.compress.weight_sharing import assign, codebook, share

logger = logging.getLogger(__name__)

DAMPING: Final = 0.1          # fraction of H's mean diagonal added to its diagonal
BLOCK: Final = 128            # columns updated together (GPTQ's lazy batch update)
MAX_PATCHES_PER_SAMPLE: Final = 4096   # convolution patches sampled per calibration sample


@dataclass(frozen=True)
class LayerShape:
    """How a weight initializer maps onto `y = W x` per group: the weight is viewed as
    [groups, out/groups, d] with `d` the inputs each output sees."""

    node: str
    op_type: str                      # "Gemm" | "MatMul" | "Conv"
    input_name: str
    bias_name: str | None
    transposed: bool                  # weight stored [in, out] (MatMul, Gemm transB=0)
    groups: int = 1
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)   # top, left, bottom, right

    def matrix(self, weight: np.ndarray) -> np.ndarray:
        """The weight as [groups, out/groups, d], float64."""
        w = weight.astype(np.float64)
        if self.op_type != "Conv":
            w = w.T if self.transposed else w
            return w.reshape(1, *w.shape)
        return w.reshape(self.groups, weight.shape[0] // self.groups, -1)

    def weight(self, matrix: np.ndarray, like: np.ndarray) -> np.ndarray:
        """Back from [groups, out/groups, d] to the initializer's layout and dtype."""
        if self.op_type != "Conv":
            w = matrix[0]
            return (w.T if self.transposed else w).astype(like.dtype)
        return matrix.reshape(like.shape).astype(like.dtype)


@dataclass
class InputStatistics:
    """Running E[x x^T] and E[x] of one layer's inputs, per group, and the factor of
    H^-1 each group's compensation needs (computed once per damping: inverting a
    4,608-wide H takes seconds, and the searches try many options per layer)."""

    second: np.ndarray                # [groups, d, d]
    first: np.ndarray                 # [groups, d]
    rows: int = 0
    factors: dict[float, np.ndarray] = field(default_factory=dict, repr=False)

    def add(self, columns: np.ndarray) -> None:
        """`columns`: [groups, rows, d] input vectors."""
        self.second += np.matmul(columns.transpose(0, 2, 1), columns)
        self.first += columns.sum(1)
        self.rows += columns.shape[1]
        self.factors.clear()

    def hessian(self) -> np.ndarray:
        return self.second / max(self.rows, 1)

    def mean(self) -> np.ndarray:
        return self.first / max(self.rows, 1)

    def inverse_factors(self, damping: float) -> np.ndarray:
        """[groups, d, d]: the upper Cholesky factor of each group's dampened H^-1."""
        if damping not in self.factors:
            self.factors[damping] = np.stack([inverse_factor(h, damping) for h in self.hessian()])
        return self.factors[damping]


def layer_shapes(model: onnx.ModelProto, weights: Iterable[str]) -> dict[str, LayerShape]:
    """The layers whose weights this module can compensate, by weight name."""
    wanted = set(weights)
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    shapes: dict[str, LayerShape] = {}
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in wanted or uses[node.input[1]] != 1:
            continue
        shape = describe(node, dims[node.input[1]], dims, uses)
        if shape is not None:
            shapes[node.input[1]] = shape
    return shapes


def describe(node: onnx.NodeProto, weight_dims: tuple[int, ...], dims: Mapping[str, tuple[int, ...]],
             uses: Mapping[str, int]) -> LayerShape | None:
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    bias = node.input[2] if len(node.input) > 2 and node.input[2] in dims and uses[node.input[2]] == 1 else None
    name = node.name or node.output[0]
    if node.op_type == "Gemm" and len(weight_dims) == 2 and not attributes.get("transA", 0):
        outputs = weight_dims[0] if attributes.get("transB", 0) else weight_dims[1]
        bias_ok = bias is not None and dims[bias] == (outputs,)
        return LayerShape(name, "Gemm", node.input[0], bias if bias_ok else None,
                          transposed=not attributes.get("transB", 0))
    if node.op_type == "MatMul" and len(weight_dims) == 2:
        return LayerShape(name, "MatMul", node.input[0], None, transposed=True)
    explicit_pads = attributes.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    if node.op_type == "Conv" and len(weight_dims) == 4 and explicit_pads:
        pads = tuple(attributes.get("pads", (0, 0, 0, 0)))
        return LayerShape(name, "Conv", node.input[0], bias, transposed=False,
                          groups=int(attributes.get("group", 1)), kernel=(weight_dims[2], weight_dims[3]),
                          strides=tuple(attributes.get("strides", (1, 1))),
                          dilations=tuple(attributes.get("dilations", (1, 1))), pads=pads)
    return None


def collect_statistics(model: onnx.ModelProto, shapes: Mapping[str, LayerShape], feeds: Iterable[Feed], *,
                       threads: int, progress: Callable[[str], None] | None = None) -> dict[str, InputStatistics]:
    """Run the calibration feeds through `model` once, reading every layer's input."""
    inputs = sorted({shape.input_name for shape in shapes.values()})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {output.name for output in probe.graph.output}
    for name in inputs:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    session = open_session(probe.SerializeToString(), threads=threads)
    weights = {t.name: t for t in model.graph.initializer}
    statistics: dict[str, InputStatistics] = {}
    rng = np.random.default_rng(0)
    feeds = tuple(feeds)
    for index, feed in enumerate(feeds, 1):
        if progress is not None:
            progress(f"reading layer inputs, sample {index}/{len(feeds)}")
        values = dict(zip(inputs, session.run(inputs, feed)))
        for name, shape in shapes.items():
            columns = input_columns(shape, np.asarray(values[shape.input_name], np.float64), rng)
            if name not in statistics:
                groups, d = columns.shape[0], columns.shape[2]
                statistics[name] = InputStatistics(np.zeros((groups, d, d)), np.zeros((groups, d)))
            statistics[name].add(columns)
    for name, shape in shapes.items():
        expected = shape.matrix(numpy_helper.to_array(weights[name])).shape
        got = statistics[name].first.shape
        if (expected[0], expected[2]) != got:
            raise ValueError(f"layer {shape.node}: inputs {got} do not match weight {expected}")
    return statistics


def input_columns(shape: LayerShape, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The input vectors `x` the layer multiplies its weights with: [groups, rows, d]."""
    if shape.op_type != "Conv":
        return x.reshape(1, -1, x.shape[-1])
    top, left, bottom, right = shape.pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    (kh, kw), (sh, sw), (dh, dw) = shape.kernel, shape.strides, shape.dilations
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    windows = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]                  # [n, c, oh, ow, kh, kw]
    n, c, oh, ow = windows.shape[:4]
    patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, shape.groups, c // shape.groups * kh * kw)
    if len(patches) > MAX_PATCHES_PER_SAMPLE * n:
        patches = patches[rng.choice(len(patches), MAX_PATCHES_PER_SAMPLE * n, replace=False)]
    return np.ascontiguousarray(patches.transpose(1, 0, 2))


@dataclass(frozen=True)
class Compressed:
    weight: np.ndarray
    bias: np.ndarray | None           # corrected bias, when the layer has one


def compensated_layer(shape: LayerShape, weight: np.ndarray, bias: np.ndarray | None, stats: InputStatistics,
                      sparsity: float, entries: int | None, *, damping: float = DAMPING) -> Compressed:
    """`weight` pruned to `sparsity` and shared to `entries` values (None: not shared),
    with the error compensated on the inputs `stats` describes and the bias corrected."""
    original = shape.matrix(weight)
    mask = pruning_mask(original, stats, sparsity, damping)
    centroids = codebook(original[~mask], entries) if entries is not None and (~mask).any() else None
    factors = stats.inverse_factors(damping)
    updated = np.stack([compensate(original[g], mask[g], factors[g], centroids) for g in range(len(factors))])
    new_bias = None
    if bias is not None:
        shift = np.einsum("god,gd->go", original - updated, stats.mean()).reshape(-1)
        new_bias = (bias.astype(np.float64) + shift).astype(bias.dtype)
    return Compressed(shape.weight(updated, weight), new_bias)


def inverse_factor(hessian: np.ndarray, damping: float) -> np.ndarray:
    """Upper Cholesky factor of the dampened H^-1; inputs never seen non-zero get a
    typical diagonal so their weights are ranked like the others."""
    h = hessian.copy()
    diagonal = np.diag(h).copy()
    typical = float(diagonal[diagonal > 0].mean()) if (diagonal > 0).any() else 1.0
    dead = diagonal <= 0
    h[dead, dead] = typical
    h[np.diag_indices_from(h)] += damping * typical
    # With J the reversal permutation and J H J = L L^T, H^-1 = U^T U for the upper
    # triangular U = J L^-1 J: one Cholesky and one triangular inverse, no full inverse.
    lower = np.linalg.cholesky(h[::-1, ::-1])
    return np.ascontiguousarray(np.linalg.inv(lower)[::-1, ::-1])


def pruning_mask(matrix: np.ndarray, stats: InputStatistics, sparsity: float, damping: float) -> np.ndarray:
    """True where a weight is zeroed: the `sparsity` fraction of the layer with the
    smallest OBS saliency w^2 / [H^-1]_jj^2, ranked over the whole layer. A weight
    whose input was zero in every calibration sample costs nothing there, so it
    ranks first (saliency 0), as SparseGPT and GPTQ zero such columns."""
    count = int(round(matrix.size * sparsity))
    mask = np.zeros(matrix.size, bool)
    if count:
        factors = stats.inverse_factors(damping)
        live = np.diagonal(stats.second, axis1=1, axis2=2) > 0               # [groups, d]
        diagonal = np.diagonal(factors, axis1=1, axis2=2)                     # [groups, d]
        saliency = np.where(live[:, None, :], matrix ** 2 / diagonal[:, None, :] ** 2, 0.0)
        mask[np.argpartition(saliency.reshape(-1), count - 1)[:count]] = True
    return mask.reshape(matrix.shape)


def compensate(w: np.ndarray, mask: np.ndarray, factor: np.ndarray, centroids: np.ndarray | None) -> np.ndarray:
    """One group's [out, d] weights with `mask` zeroed and the rest moved onto
    `centroids`, column by column, each column's error spread over the later ones
    through `factor` (the upper Cholesky factor of H^-1)."""
    w = w.copy()
    d = w.shape[1]
    for start in range(0, d, BLOCK):
        end = min(start + BLOCK, d)
        block = w[:, start:end].copy()
        errors = np.zeros_like(block)
        inner = factor[start:end, start:end]
        for j in range(end - start):
            column = block[:, j]
            target = np.where(mask[:, start + j], 0.0, column)
            if centroids is not None:
                kept = ~mask[:, start + j]
                target[kept] = centroids[assign(column[kept], centroids)]
            error = (column - target) / inner[j, j]
            block[:, j] = target
            block[:, j + 1:] -= np.outer(error, inner[j, j + 1:])
            errors[:, j] = error
        w[:, start:end] = block
        w[:, end:] -= errors @ factor[start:end, end:]
    return w


def plain_layer(weight: np.ndarray, sparsity: float, entries: int | None) -> np.ndarray:
    """Magnitude pruning then k-means sharing, for layers this module cannot compensate."""
    pruned = prune(weight, sparsity)
    return pruned if entries is None else share(pruned, entries)
