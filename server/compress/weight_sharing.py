"""Weight sharing: a layer's non-zero weights replaced by the nearest of k shared
values found by 1-D k-means; zeros stay exactly zero so pruning survives.

With k <= 16 each weight becomes a 4-bit (or smaller) index; the fcpack package
stores the codebook and the indices, and entropy-codes them.
"""

from __future__ import annotations

from typing import Final

import numpy as np

# Codebook sizes the sensitivity search tries per layer, fewest entries first; 256 is
# the fallback for layers that tolerate no 16-entry codebook (8-bit indices).
ENTRY_STEPS: Final[tuple[int, ...]] = (4, 8, 16, 256)
ITERATIONS: Final = 30


def share(values: np.ndarray, entries: int, *, iterations: int = ITERATIONS) -> np.ndarray:
    """Values with every non-zero replaced by its k-means centroid (k = `entries`)."""
    if entries < 1:
        raise ValueError(f"a codebook needs at least one entry, got {entries}")
    flat = values.reshape(-1).astype(np.float64)
    nonzero = flat != 0
    points = flat[nonzero]
    if points.size == 0:
        return values.copy()
    centroids = codebook(points, entries, iterations=iterations)
    shared = flat.copy()
    shared[nonzero] = centroids[assign(points, centroids)]
    return shared.astype(values.dtype).reshape(values.shape)


def codebook(points: np.ndarray, entries: int, *, iterations: int = ITERATIONS) -> np.ndarray:
    """At most `entries` centroids of 1-D k-means over `points`, sorted ascending;
    started from evenly spaced quantiles so the result is deterministic."""
    if entries < 1:
        raise ValueError(f"a codebook needs at least one entry, got {entries}")
    points = points.reshape(-1).astype(np.float64)
    centroids = np.unique(np.quantile(points, (np.arange(entries) + 0.5) / entries))
    for _ in range(iterations):
        assignment = assign(points, centroids)
        counts = np.bincount(assignment, minlength=len(centroids))
        sums = np.bincount(assignment, weights=points, minlength=len(centroids))
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(updated, centroids, rtol=0, atol=1e-12):
            break
        centroids = np.sort(updated)
    return centroids


def assign(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (centroids sorted ascending)."""
    boundaries = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(boundaries, points)
