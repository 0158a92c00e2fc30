from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetcast.server.compress.prune import prune
from fleetcast.server.compress.weight_sharing import share


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.3, 0.5, 0.9]))
def test_prune_zeroes_the_smallest_magnitudes_at_the_asked_sparsity(seed: int, sparsity: float) -> None:
    values = np.random.default_rng(seed).standard_normal((32, 16)).astype(np.float32)
    pruned = prune(values, sparsity)
    zeros = pruned == 0
    assert zeros.sum() == round(values.size * sparsity)
    if zeros.any() and (~zeros).any():
        assert np.abs(values[zeros]).max() <= np.abs(values[~zeros]).min()
    assert np.array_equal(pruned[~zeros], values[~zeros])


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 4, 16]))
def test_share_leaves_at_most_k_distinct_nonzero_values_and_keeps_zeros(seed: int, entries: int) -> None:
    values = prune(np.random.default_rng(seed).standard_normal((40, 20)).astype(np.float32), 0.5)
    shared = share(values, entries)
    assert shared.dtype == values.dtype
    assert np.array_equal(shared == 0, values == 0)
    assert len(np.unique(shared[shared != 0])) <= entries


def test_more_codebook_entries_give_smaller_error() -> None:
    values = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    errors = [float(np.abs(share(values, k) - values).mean()) for k in (2, 4, 16, 256)]
    assert errors == sorted(errors, reverse=True)
