"""Gradient dot product and gradient cosine similarity at the final model (no Hessian)."""

from __future__ import annotations

import torch

from precompute.influence.base import Capabilities, InfluenceEstimator
from precompute.influence.tracin import self_dot


class GradDot(InfluenceEstimator):
    """score(t, i) = g_t . g_i at the final parameters: influence with H replaced by I.

    Cost O(n p) per test batch. Fast, dominated by samples with large gradients (high loss), which
    makes its self-influence |g_i|^2 a decent mislabel signal.
    """

    name = "graddot"
    capabilities = Capabilities(compressed_store=True)
    summary = "gradient dot product (H = I)"

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._require_fit().features(x, y)

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._require_fit().features(x, y)

    def self_influence(self, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor | None = None) -> torch.Tensor:
        """``|g_i|^2`` ``[b]``, from the stored train factors when given (no second gradient pass)."""
        return self_dot(self.train_factors(x, y) if train is None else train)


class GradCos(InfluenceEstimator):
    """score(t, i) = cos(g_t, g_i): direction only, so not dominated by high-loss samples.

    Cost O(n p). Self-influence is always 1 (useless for finding mislabels; use another method).
    """

    name = "gradcos"
    capabilities = Capabilities(compressed_store=True)
    summary = "gradient cosine similarity"

    @staticmethod
    def _unit(g: torch.Tensor) -> torch.Tensor:
        """Rows scaled to unit length in place (``g`` is a fresh ``[b, k]``: no second copy)."""
        return g.div_(g.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._unit(self._require_fit().features(x, y))

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._unit(self._require_fit().features(x, y))

    def self_influence(self, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor | None = None) -> torch.Tensor:
        """``|u_i|^2`` (1 up to rounding) ``[b]``, from the stored unit rows when given."""
        return self_dot(self.train_factors(x, y) if train is None else train)
