"""TracInCP (Pruthi et al. 2020) over the checkpoints saved during training."""

from __future__ import annotations

import math

import torch

from precompute.errors import MethodError
from precompute.gradients import per_sample_gradients
from precompute.influence.base import Capabilities, InfluenceEstimator, InfluenceTask


def self_dot(train: torch.Tensor) -> torch.Tensor:
    """``sum_j t_ij^2`` ``[b]`` for factors ``train [b, d]`` whose query side equals their train side,
    accumulated in at least float32 (a float16 store is not squared in float16)."""
    t = train if train.dtype in (torch.float32, torch.float64) else train.to(torch.float32)
    return (t * t).sum(dim=1)


class TracInCP(InfluenceEstimator):
    """score(t, i) = sum_c lr_c * g_t(theta_c) . g_i(theta_c) over saved checkpoints c.

    Approximates the total loss reduction on t caused by the SGD steps on i. Cost O(C n p) for C
    checkpoints; no Hessian. A factor row is the C per-checkpoint rows ``sqrt(lr_c) g(theta_c)`` side
    by side (``[b, C k]``, written in place, no concatenated copy; the store keeps them chunked on
    disk); scores sum the C per-checkpoint ``[b_test, b_train]`` blocks, and self-influence is
    ``sum_c lr_c |g_i(theta_c)|^2`` read from the stored row (no second gradient pass).
    """

    name = "tracin"
    capabilities = Capabilities(needs_checkpoints=True, compressed_store=True)
    summary = "TracInCP: gradient dot products summed over training checkpoints"

    def fit(self, task: InfluenceTask) -> TracInCP:
        if not task.checkpoints:
            raise MethodError("tracin: the run has no saved checkpoints; set train.checkpoints >= 1")
        return super().fit(task)

    def _factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[b, C k]``: each checkpoint's gradients (compressed when the task has a compressor) written
        into their own columns and scaled there in place (no per-checkpoint ``[b, k]`` copy)."""
        task = self._require_fit()
        n_ckpt = len(task.checkpoints)
        out: torch.Tensor | None = None
        for i, c in enumerate(task.checkpoints):
            params = task.checkpoint_params(c)
            if task.compressor is None:
                ref = next(iter(params.values()))
                k = task.space.size
                if out is None:
                    out = torch.empty(len(x), n_ckpt * k, dtype=ref.dtype, device=ref.device)
                block = out[:, i * k:(i + 1) * k]
                per_sample_gradients(task.model, x, y, task.space, task.batch_size, params, task.loss_fn, out=block)
            else:
                f = task.features(x, y, params)  # [b, k]
                k = f.shape[1]
                if out is None:
                    out = f.new_empty(f.shape[0], n_ckpt * k)
                block = out[:, i * k:(i + 1) * k]
                block.copy_(f)
                del f
            block.mul_(math.sqrt(c.lr))
        assert out is not None
        return out

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._factors(x, y)

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._factors(x, y)

    def scores(self, query: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
        """``[b_test, b_train]``: the per-checkpoint blocks summed (one ``addmm`` each)."""
        n_ckpt = len(self._require_fit().checkpoints)
        k = query.shape[1] // n_ckpt
        out = query[:, :k] @ train[:, :k].T
        for i in range(1, n_ckpt):
            out.addmm_(query[:, i * k:(i + 1) * k], train[:, i * k:(i + 1) * k].T)
        return out

    def self_influence(self, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor | None = None) -> torch.Tensor:
        return self_dot(self.train_factors(x, y) if train is None else train)
