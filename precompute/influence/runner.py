"""Driving an estimator over a whole dataset in chunks: the same loop for the cache and for notebooks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from precompute.influence.base import InfluenceEstimator, InfluenceTask


def compute_train_factors(est: InfluenceEstimator, task: InfluenceTask, batch_size: int,
                          tick: Callable[[int], None] | None = None) -> torch.Tensor:
    """Train-side factors for the whole training set, ``[n_train, d]``."""
    parts = []
    for s in range(0, task.n_train, batch_size):
        parts.append(est.train_factors(task.x_train[s:s + batch_size], task.y_train[s:s + batch_size]))
        if tick:
            tick(len(parts[-1]))
    return torch.cat(parts)


def score_blocks(est: InfluenceEstimator, train_factors: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                 batch_size: int, start: int = 0, stop: int | None = None):
    """Yield ``(row_start, scores [b, n_train] float32 numpy)`` for test rows ``start:stop``.

    Row ranges are independent, so shards of a large test set can run in separate processes.
    """
    stop = len(x_test) if stop is None else stop
    for s in range(start, stop, batch_size):
        e = min(s + batch_size, stop)
        q = est.query_factors(x_test[s:e], y_test[s:e])
        yield s, est.scores(q, train_factors).detach().to("cpu", torch.float32).numpy()


def compute_self_influence(est: InfluenceEstimator, task: InfluenceTask, batch_size: int,
                           train_factors: torch.Tensor | None = None) -> np.ndarray:
    """``score(i, i)`` for every training sample, ``[n_train]`` float64 numpy; pass the run's
    ``train_factors [n_train, d]`` to reuse them (then only the query side is computed)."""
    parts = [est.self_influence(task.x_train[s:s + batch_size], task.y_train[s:s + batch_size],
                                None if train_factors is None else train_factors[s:s + batch_size])
             for s in range(0, task.n_train, batch_size)]
    return torch.cat(parts).detach().to("cpu", torch.float64).numpy()


def compute_scores(est: InfluenceEstimator, task: InfluenceTask, x_test: torch.Tensor, y_test: torch.Tensor,
                   train_batch_size: int = 512, test_batch_size: int = 256) -> np.ndarray:
    """Fit (if needed) and return the full ``[n_test, n_train]`` score matrix in memory (small runs, tests)."""
    if est.task is None:
        est.fit(task)
    tf = compute_train_factors(est, task, train_batch_size)
    out = np.zeros((len(x_test), task.n_train), np.float32)
    for s, block in score_blocks(est, tf, x_test, y_test, test_batch_size):
        out[s:s + len(block)] = block
    return out
