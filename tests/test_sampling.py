"""RS-maximin reference selection: checked against a brute-force farthest-first traversal."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy.spatial.distance import cdist

from oamlm_dist.errors import InputError
from oamlm_dist.sampling import rs_maximin


def brute_force(X: np.ndarray, start: int, k: int) -> np.ndarray:
    """Farthest-first traversal with full distances; np.argmax takes the lowest index."""
    picks = [start]
    min_dist = cdist(X, X[[start]])[:, 0]
    while len(picks) < k and min_dist.max() > 0:
        picks.append(int(np.argmax(min_dist)))
        min_dist = np.minimum(min_dist, cdist(X, X[[picks[-1]]])[:, 0])
    return np.array(picks)


@pytest.fixture
def X() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(300, 6))


def test_each_pick_is_the_farthest_from_the_picked(X):
    picks = rs_maximin(X, 40, seed=3, block_rows=32)
    assert picks.dtype == np.int64 and len(set(picks.tolist())) == 40
    for t in range(1, len(picks)):
        min_dist = cdist(X, X[picks[:t]]).min(axis=1)
        assert min_dist[picks[t]] == pytest.approx(min_dist.max(), rel=1e-12)
    np.testing.assert_array_equal(picks, brute_force(X, int(picks[0]), 40))


def test_ties_go_to_the_lowest_index():
    grid = np.array([[i, j] for i in range(6) for j in range(6)], dtype=np.float64)
    for seed in range(4):
        picks = rs_maximin(grid, 36, seed=seed, block_rows=5)
        np.testing.assert_array_equal(picks, brute_force(grid, int(picks[0]), 36))


def test_deterministic_under_a_seed_and_seeds_change_the_start(X):
    np.testing.assert_array_equal(rs_maximin(X, 10, seed=1), rs_maximin(X, 10, seed=1))
    assert rs_maximin(X, 10, seed=1)[0] != rs_maximin(X, 10, seed=2)[0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blocked_equals_unblocked(X, dtype):
    data = X.astype(dtype)
    whole = rs_maximin(data, 60, seed=5, block_rows=len(data))
    for block_rows in (1, 7, 64):
        np.testing.assert_array_equal(rs_maximin(data, 60, seed=5, block_rows=block_rows), whole)


def test_chunked_array_like_input_equals_numpy(X):
    stored = zarr.create_array(
        store=zarr.storage.MemoryStore(), shape=X.shape, chunks=(16, 6), dtype=X.dtype
    )
    stored[:] = X
    np.testing.assert_array_equal(
        rs_maximin(stored, 25, seed=2, block_rows=8), rs_maximin(X, 25, seed=2)
    )


def test_random_pool_restricts_the_candidates(X):
    picks = rs_maximin(X, 20, seed=4, pool_size=50)
    np.testing.assert_array_equal(picks, rs_maximin(X, 20, seed=4, pool_size=50))
    assert len(set(picks.tolist())) == 20
    # The pool is a fixed random subset: growing k only extends the sequence.
    np.testing.assert_array_equal(rs_maximin(X, 50, seed=4, pool_size=50)[:20], picks)
    with pytest.warns(RuntimeWarning, match="only 50 distinct rows"):
        assert len(rs_maximin(X, 51, seed=4, pool_size=50)) == 50
    np.testing.assert_array_equal(
        rs_maximin(X, 20, seed=4, pool_size=len(X)), rs_maximin(X, 20, seed=4)
    )


def test_transform_is_applied_per_block(X):
    def scale(block):
        return 3.0 * block + 1.0

    np.testing.assert_array_equal(
        rs_maximin(X, 15, transform=scale, block_rows=10), rs_maximin(scale(X), 15)
    )


def test_duplicate_rows_stop_early_with_a_warning():
    distinct = np.random.default_rng(0).random((5, 3))
    X = np.repeat(distinct, 20, axis=0)
    with pytest.warns(RuntimeWarning, match="only 5 distinct rows"):
        picks = rs_maximin(X, 10, block_rows=7)
    assert sorted((picks // 20).tolist()) == [0, 1, 2, 3, 4]


def test_user_errors_are_one_line(X):
    bad = X.copy()
    bad[17, 2] = np.nan
    with pytest.raises(InputError, match="row 17"):
        rs_maximin(bad, 5)
    with pytest.raises(InputError, match="pool_size <= 10\\b") as info:
        rs_maximin(X, 5, max_memory=10 * 6 * 8)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError):
        rs_maximin(X, 0)
