"""The format layer's comparison metrics (one definition each) against scipy's references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr

from cache_format.metrics import (
    mean_spearman,
    rank_rows,
    spearman,
    spearman_rows,
    topk_overlap,
    topk_shared,
)


def test_rank_rows_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(7, 40)).astype(float)  # many ties
    np.testing.assert_array_equal(rank_rows(a), rankdata(a, axis=1))
    np.testing.assert_array_equal(rank_rows(np.array([3.0, 1.0, 2.0, 1.0])), [4.0, 1.5, 3.0, 1.5])


def test_spearman_matches_scipy_and_handles_constant_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(x, 2 * x + 1) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(spearman(x, np.zeros_like(x)))
    a, b = rng.normal(size=(5, 30)), rng.normal(size=(5, 30))
    want = [spearmanr(a[i], b[i]).statistic for i in range(5)]
    np.testing.assert_allclose(spearman_rows(a, b), want, atol=1e-12)
    assert mean_spearman(a, b) == pytest.approx(np.mean(want), abs=1e-12)


def test_topk_overlap_is_shared_over_k():
    assert topk_overlap(np.array([1, 2, 3, 4]), np.array([3, 9, 1, 8])) == 0.5  # 2 of k = 4 (Jaccard would be 1/3)
    assert topk_shared(np.array([1, 2, 3, 4]), np.array([3, 9, 1, 8])) == 2
    assert topk_overlap(np.array([1, 2]), np.array([1, 2])) == 1.0
    assert topk_overlap(np.array([1, 2]), np.array([5, 6])) == 0.0
