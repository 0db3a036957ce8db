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
from precompute.distributed.context import SINGLE, DistContext
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


def test_blocks(n_test: int, test_block: int, dist: DistContext = SINGLE) -> list[tuple[int, int]]:
    """This process's ``(start, stop)`` test blocks: block ``b`` is rows ``b*test_block:(b+1)*test_block``."""
    return [(s, min(s + test_block, n_test)) for b, s in enumerate(range(0, n_test, test_block)) if dist.owns(b)]


def score_against_store(est: InfluenceEstimator, store: GradientStore, x_test: torch.Tensor, y_test: torch.Tensor,
                        sink: ScoreWriter, test_block: int, tick: Callable[[int], Any] | None = None,
                        dist: DistContext = SINGLE) -> None:
    """Score this process's test blocks (all of them in one process) against every store chunk into ``sink``
    (``x_test [n_test, ...]``)."""
    for s, e in test_blocks(len(x_test), test_block, dist):
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
                              batch_size: int, dist: DistContext = SINGLE) -> np.ndarray:
    """``score(i, i)`` for every training sample ``[n_train]`` float64, the train side read from the store
    in blocks of :func:`self_influence_rows` rows (gathered across store chunks when a block spans them).
    In a torchrun launch each rank fills its blocks (block ``b`` is rank ``b % world``'s) and leaves the
    others at zero; the blocks are the same whatever the world size, so the values are too."""
    out = np.zeros(task.n_train, np.float64)
    rows = self_influence_rows(est, batch_size)
    for b, a in enumerate(range(0, task.n_train, rows)):
        if not dist.owns(b):
            continue
        e = min(a + rows, task.n_train)
        t = _readonly_tensor(store.read_rows(a, e)).to(task.x_train.device)
        out[a:e] = est.self_influence(task.x_train[a:e], task.y_train[a:e], t).detach().to("cpu", torch.float64).numpy()
    return out
