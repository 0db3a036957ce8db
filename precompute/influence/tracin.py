"""TracInCP (Pruthi et al. 2020) over the checkpoints saved during training."""

from __future__ import annotations

import math

import torch

from precompute.errors import MethodError
from precompute.influence.base import Capabilities, InfluenceEstimator, InfluenceTask


class TracInCP(InfluenceEstimator):
    """score(t, i) = sum_c lr_c * g_t(theta_c) . g_i(theta_c) over saved checkpoints c.

    Approximates the total loss reduction on t caused by the SGD steps on i. Cost O(C n p) for C
    checkpoints; no Hessian. Factors are the concatenated ``sqrt(lr_c) g(theta_c)`` ``[b, C p]``.
    """

    name = "tracin"
    capabilities = Capabilities(needs_checkpoints=True, compressed_store=True)
    summary = "TracInCP: gradient dot products summed over training checkpoints"

    def fit(self, task: InfluenceTask) -> TracInCP:
        if not task.checkpoints:
            raise MethodError("tracin: the run has no saved checkpoints; set train.checkpoints >= 1")
        return super().fit(task)

    def _factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self._require_fit()
        parts = [math.sqrt(c.lr) * task.features(x, y, task.checkpoint_params(c)) for c in task.checkpoints]
        return torch.cat(parts, dim=1)

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._factors(x, y)

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._factors(x, y)
