"""The comparison metrics every part of the product uses, defined once (numpy only).

- :func:`spearman` / :func:`spearman_rows`: rank correlation of score vectors (average ranks for ties).
- :func:`topk_overlap`: the share of one top-k list found in the other, ``|A & B| / k``; the UI calls it
  "top-k overlap" and shows it as "shared / k".
"""

from __future__ import annotations

import numpy as np


def rank_rows(a: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; ties share their mean rank) along the last axis: ``[n, m] -> [n, m]`` float64.

    Equals ``scipy.stats.rankdata(a, axis=-1)`` for finite input; a 1-D input gives a 1-D result.
    """
    a = np.asarray(a, dtype=np.float64)
    flat = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
    n, m = flat.shape
    order = np.argsort(flat, axis=1, kind="stable")
    s = np.take_along_axis(flat, order, axis=1)
    idx = np.broadcast_to(np.arange(m), (n, m))
    starts = np.ones((n, m), bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    ends = np.ones((n, m), bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, idx, m - 1)[:, ::-1], axis=1)[:, ::-1]
    out = np.empty((n, m), np.float64)
    np.put_along_axis(out, order, (first + last) / 2.0 + 1.0, axis=1)
    return out.reshape(a.shape)


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of ``[n, m]`` arrays ``[n]``; NaN where a row is constant."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(1) / den
    r[~np.isfinite(r) | (den <= 1e-300)] = np.nan
    return r


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Spearman rank correlation of ``[n, m]`` arrays ``[n]``; NaN where a row is constant."""
    return pearson_rows(rank_rows(np.atleast_2d(a)), rank_rows(np.atleast_2d(b)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors ``[n]`` (NaN if either is constant)."""
    return float(spearman_rows(np.ravel(a)[None], np.ravel(b)[None])[0])


def mean_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the row-wise Spearman of ``[n, m]`` score matrices (NaN rows ignored)."""
    r = spearman_rows(a, b)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def topk_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """``|A & B| / k``: the share of top-k list ``a`` that also appears in top-k list ``b`` (k = len(a)).

    1.0 for identical sets, 0.0 for disjoint ones; 1.0 when both lists are empty.
    """
    sa = {int(x) for x in np.ravel(a)}
    if not sa:
        return 1.0 if not len(np.ravel(b)) else 0.0
    return len(sa & {int(x) for x in np.ravel(b)}) / len(sa)


def topk_shared(a: np.ndarray, b: np.ndarray) -> int:
    """How many ids two top-k lists share."""
    return len({int(x) for x in np.ravel(a)} & {int(x) for x in np.ravel(b)})
