"""Scoring against a gradient store in blocks: neither the test side nor the train side is ever whole.

For each block of test rows the query factors ``[b, d]`` are computed once, then scored against each
store chunk ``[rows, d]``; every tile ``[b, rows]`` goes to a :class:`~precompute.cache.ScoreWriter`
(dense memmap and/or top-k). Each score is one dot product over the factor width in the factors' dtype,
so it does not depend on how rows and chunks were cut (tests check bit-identity). Self-influence reuses each chunk as the train side.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from precompute.cache.scores import ScoreWriter
from precompute.influence.base import InfluenceEstimator, InfluenceTask
from precompute.store.gradient_store import GradientStore


def train_factor_fn(est: InfluenceEstimator, task: InfluenceTask, batch_size: int) -> Callable[[int, int], np.ndarray]:
    """``(start, stop) -> train factors [stop - start, d]`` of those training rows, in batches."""
    def compute(start: int, stop: int) -> np.ndarray:
        out: np.ndarray | None = None  # filled batch by batch: no list of parts and concatenated copy
        for s in range(start, stop, batch_size):
            e = min(s + batch_size, stop)
            part = est.train_factors(task.x_train[s:e], task.y_train[s:e]).detach().to("cpu").numpy()
            if out is None:
                out = np.empty((stop - start, part.shape[1]), part.dtype)
            out[s - start:e - start] = part
            del part
        return out if out is not None else np.zeros((0, 0))
    return compute


def _readonly_tensor(chunk: np.ndarray) -> torch.Tensor:
    """A tensor view of a read-only memmap chunk (never written to, so torch's warning does not apply)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(chunk))


def _chunk_tensor(chunk: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return _readonly_tensor(chunk).to(device=like.device, dtype=like.dtype)


def score_against_store(est: InfluenceEstimator, store: GradientStore, x_test: torch.Tensor, y_test: torch.Tensor,
                        sink: ScoreWriter, test_block: int, tick: Callable[[int], Any] | None = None) -> None:
    """Score every test row against every store chunk into ``sink`` (``x_test [n_test, ...]``)."""
    for s in range(0, len(x_test), test_block):
        e = min(s + test_block, len(x_test))
        q = est.query_factors(x_test[s:e], y_test[s:e]).detach()
        for c0, chunk in store.iter_chunks():
            tile = est.scores(q, _chunk_tensor(chunk, q))
            sink.write_tile(s, c0, tile.to("cpu", torch.float32).numpy())
        if tick is not None:
            tick(e - s)


def self_influence_rows(est: InfluenceEstimator, batch_size: int) -> int:
    """Training rows per ``self_influence`` call: the estimator's ``self_influence_block()`` where it has
    one (iterative solvers: one batched solve over many rows costs less per row), else ``batch_size``."""
    block = getattr(est, "self_influence_block", None)
    return max(int(block()), 1) if callable(block) else batch_size


def self_influence_from_store(est: InfluenceEstimator, task: InfluenceTask, store: GradientStore,
                              batch_size: int) -> np.ndarray:
    """``score(i, i)`` for every training sample ``[n_train]`` float64, the train side read from the store
    in blocks of :func:`self_influence_rows` rows (gathered across store chunks when a block spans them)."""
    out = np.zeros(task.n_train, np.float64)
    rows = self_influence_rows(est, batch_size)
    pending: list[np.ndarray] = []
    start = filled = 0

    def flush() -> None:
        nonlocal start, filled
        if not filled:
            return
        t = _readonly_tensor(pending[0] if len(pending) == 1 else np.concatenate(pending)).to(task.x_train.device)
        a, b = start, start + filled
        out[a:b] = est.self_influence(task.x_train[a:b], task.y_train[a:b], t).detach().to("cpu", torch.float64).numpy()
        pending.clear()
        start, filled = b, 0

    for c0, chunk in store.iter_chunks():
        assert c0 == start + filled, "store chunks come in row order"
        s = 0
        while s < len(chunk):
            take = min(rows - filled, len(chunk) - s)
            pending.append(chunk[s:s + take])
            filled += take
            s += take
            if filled == rows:
                flush()
    flush()
    return out
