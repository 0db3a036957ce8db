"""Outlier Gradient Analysis and train-train proponents over a chunked gradient store (never ``[n, p]``).

The mislabels stage writes the per-sample last-layer loss gradients (exact, or compressed by the
run's :class:`~precompute.compression.GradientCompressor` when they would not fit the memory budget)
into a :class:`~precompute.store.GradientStore` chunk by chunk, then:

* :func:`oga_scores_from_store`: the outlier detector is fitted on all rows when there are at most
  ``fit_rows`` of them (then the scores equal :func:`~precompute.mislabels.ranking.oga_scores` on
  the in-memory matrix exactly), else on a seeded random subsample of ``fit_rows`` rows gathered
  chunk by chunk; every row is then scored chunk by chunk.
* :func:`train_topk_from_store`: :func:`~precompute.mislabels.ranking.train_topk` with both sides
  read from the store (row block x store chunk tiles, running exact top-k merge).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from precompute.errors import CacheError
from precompute.gradients import per_sample_gradients
from precompute.mislabels.ranking import oga_scores
from precompute.params import ParamSpace
from precompute.store.gradient_store import GradientStore, StoreSpec

#: rows the outlier detector is fitted on at most (IsolationForest trees subsample 256 rows each anyway)
FIT_ROWS = 16384


def fill_gradient_store(model: torch.nn.Module, x: Any, y: torch.Tensor, space: ParamSpace, root: str | Path,
                        chunk_rows: int, compressor: Any = None, batch_size: int = 512,
                        fingerprint: str = "", tick: Callable[[int, int], Any] | None = None) -> GradientStore:
    """Per-sample loss gradients of ``x [n, ...]``, ``y [n]`` over ``space`` (``[n, p]``, or ``[n, k]``
    compressed by ``compressor``) into the store at ``root``, one chunk of ``chunk_rows`` rows at a time."""
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    width = int(compressor.dim) if compressor is not None else space.size
    spec = StoreSpec(n=len(y), k=width, dtype=dtype, chunk_rows=max(1, int(chunk_rows)), fingerprint=fingerprint)
    try:
        store = GradientStore(root, spec)
    except CacheError:  # left by another model or settings: recompute
        shutil.rmtree(root, ignore_errors=True)
        store = GradientStore(root, spec)

    def compute(start: int, stop: int) -> np.ndarray:
        parts = []
        for s in range(start, stop, batch_size):
            e = min(s + batch_size, stop)
            g = (compressor.compress(model, x[s:e], y[s:e]) if compressor is not None
                 else per_sample_gradients(model, x[s:e], y[s:e], space))
            parts.append(g.detach().to("cpu").numpy())
        return np.concatenate(parts)

    store.fill(compute, tick)
    return store


def _gather(store: GradientStore, rows: np.ndarray) -> np.ndarray:
    """``store[rows]`` (sorted ``rows``) as float64 ``[len(rows), k]``, read chunk by chunk."""
    out = np.empty((len(rows), store.spec.k), np.float64)
    for c0, chunk in store.iter_chunks():
        lo, hi = np.searchsorted(rows, [c0, c0 + len(chunk)])
        if hi > lo:
            out[lo:hi] = chunk[rows[lo:hi] - c0]
    return out


def oga_scores_from_store(store: GradientStore, detector: str = "isolation_forest", seed: int = 0,
                          fit_rows: int = FIT_ROWS) -> np.ndarray:
    """Outlier score of every row of the store ``[n]`` float64 (higher = more of an outlier)."""
    n = store.spec.n
    if n <= fit_rows:
        return oga_scores(store.read(), detector, seed)
    pick = np.sort(np.random.default_rng(seed).choice(n, fit_rows, replace=False))
    fit = _gather(store, pick)
    if detector == "isolation_forest":
        from sklearn.ensemble import IsolationForest

        model: Any = IsolationForest(n_estimators=200, random_state=seed).fit(fit)
    elif detector == "lof":
        from sklearn.neighbors import LocalOutlierFactor

        model = LocalOutlierFactor(n_neighbors=min(20, fit_rows - 1), novelty=True).fit(fit)
    else:
        return oga_scores(fit[:2], detector, seed)  # raises the one unknown-detector error
    out = np.empty(n, np.float64)
    for c0, chunk in store.iter_chunks():
        out[c0:c0 + len(chunk)] = -model.score_samples(np.asarray(chunk, np.float64))
    return out


def train_topk_from_store(store: GradientStore, k: int, block: int = 1024,
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Strongest proponents and opponents of each row among the *other* rows (``g_i . g_j``), both
    sides read from ``store``. Returns ``(pro_ids, pro_scores, opp_ids, opp_scores)``, each ``[n, k]``,
    best first; equal to :func:`~precompute.mislabels.ranking.train_topk` on the whole matrix."""
    from precompute.cache.scores import topk_sorted

    n = store.spec.n
    k = min(k, n - 1)
    out = [np.zeros((n, k), np.int32), np.zeros((n, k), np.float32), np.zeros((n, k), np.int32),
           np.zeros((n, k), np.float32)]
    for c0, rows_chunk in store.iter_chunks():
        for s in range(0, len(rows_chunk), block):
            a = np.asarray(rows_chunk[s:s + block], np.float32)
            r0 = c0 + s
            cand: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
            for d0, cols in store.iter_chunks():
                tile = a @ np.asarray(cols, np.float32).T
                rows = np.arange(len(a))
                diag = rows + r0 - d0
                inside = (diag >= 0) & (diag < len(cols))
                hi, lo = tile.copy(), tile
                hi[rows[inside], diag[inside]] = -np.inf
                lo[rows[inside], diag[inside]] = np.inf
                kk = min(k, len(cols))
                pi, pv = topk_sorted(hi, kk, 1, True)
                oi, ov = topk_sorted(lo, kk, 1, False)
                cand.append((pi + d0, pv, oi + d0, ov))
            for j, (ci, cv, sign) in enumerate(((0, 1, -1.0), (2, 3, 1.0))):
                ids = np.concatenate([c[ci] for c in cand], 1)
                vals = np.concatenate([c[cv] for c in cand], 1)
                order = np.lexsort((ids, sign * vals.astype(np.float64)), axis=1)[:, :k]  # ties: lower index
                out[2 * j][r0:r0 + len(a)] = np.take_along_axis(ids, order, 1)
                out[2 * j + 1][r0:r0 + len(a)] = np.take_along_axis(vals, order, 1)
    return out[0], out[1], out[2], out[3]

