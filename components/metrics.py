"""Comparing two methods' rankings for one test point (numpy only)."""

from __future__ import annotations

import numpy as np


def topk_overlap(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """Shared ids between two top-k lists: (count, Jaccard index of the two sets)."""
    sa, sb = {int(x) for x in a}, {int(x) for x in b}
    union = sa | sb
    shared = len(sa & sb)
    return shared, (shared / len(union) if union else 1.0)


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (0-based; ties share their mean rank) of a 1-D array ``[n] -> [n]`` float64."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    r = np.empty(len(x), np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    # average the ranks of tied values
    _, start, counts = np.unique(sorted_x, return_index=True, return_counts=True)
    if (counts > 1).any():
        for s, c in zip(start[counts > 1], counts[counts > 1], strict=True):
            r[order[s:s + c]] = s + (c - 1) / 2.0
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors ``[n]`` (nan if either is constant)."""
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")
