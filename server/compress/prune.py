"""Unstructured magnitude pruning of weight tensors.

onnxruntime's dense kernels gain no speed from zeros; pruning pays only through
entropy coding in the fcpack package, so it is used by the `smallest` level only.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import onnx

# Sparsity steps the sensitivity search tries per layer, most aggressive first.
SPARSITY_STEPS: Final[tuple[float, ...]] = (0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.3, 0.0)
MIN_PRUNABLE_ELEMENTS: Final = 256
PRUNABLE_OP_TYPES: Final = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def prunable_weights(model: onnx.ModelProto) -> list[str]:
    """Weight initializers of Conv/Gemm/MatMul layers worth pruning, largest first."""
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer
             if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and len(t.dims) >= 2}
    names = {node.input[1] for node in model.graph.node
             if node.op_type in PRUNABLE_OP_TYPES and len(node.input) > 1 and node.input[1] in sizes}
    chosen = [name for name in names if sizes[name] >= MIN_PRUNABLE_ELEMENTS]
    return sorted(chosen, key=lambda name: (-sizes[name], name))


def prune(values: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the `sparsity` fraction of entries with the smallest magnitude."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    count = int(round(values.size * sparsity))
    if count == 0:
        return values.copy()
    flat = values.reshape(-1)
    order = np.argpartition(np.abs(flat), count - 1)[:count]
    pruned = flat.copy()
    pruned[order] = 0
    return pruned.reshape(values.shape)
