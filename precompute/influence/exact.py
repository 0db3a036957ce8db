"""Exact influence with the explicitly formed damped Hessian, factored once by Cholesky."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from precompute.errors import ConfigError, MethodError
from precompute.hessian import objective_hessian
from precompute.influence.arnoldi import arnoldi_eigs
from precompute.influence.base import Capabilities, InfluenceEstimator, InfluenceTask, MethodConfig

#: the default limit: H is p x p float64 (10^4 parameters = 800 MB)
EXACT_MAX_PARAMS = 10_000
#: right-hand sides per triangular solve (bounds the float64 work copy to p x SOLVE_BLOCK)
SOLVE_BLOCK = 512
#: Lanczos steps for each end of the spectrum reported in the manifest
LANCZOS_STEPS = 60


@dataclass
class ExactConfig(MethodConfig):
    """``max_params``: refuse above this many influence parameters (H is p x p float64)."""

    max_params: int = EXACT_MAX_PARAMS

    def validate(self) -> ExactConfig:
        super().validate()
        if not isinstance(self.max_params, int) or self.max_params < 1:
            raise ConfigError(f"influence.options.exact.max_params: must be an integer >= 1 (got {self.max_params!r})")
        return self


def extreme_eigenvalues(H: torch.Tensor, solve: Callable[[torch.Tensor], torch.Tensor], lam: float,
                        steps: int = LANCZOS_STEPS) -> tuple[float, float]:
    """``(min, max)`` eigenvalue of the symmetric ``H [p, p]`` from ``steps`` Lanczos steps each.

    The largest from the Krylov space of H; the smallest as ``1 / mu - lam`` with mu the largest Ritz
    value of ``(H + lam I)^-1`` (``solve``: rows ``[k, p]`` -> rows; shift-invert), so both
    ends converge in a few dozen O(p^2) products. Ritz values are inner bounds (``max`` from below,
    ``min`` from above) and exact once ``steps >= p``.
    """
    p = H.shape[0]
    top = arnoldi_eigs(lambda v: v @ H, p, steps, 0, H.device)[0].max()
    mu = arnoldi_eigs(solve, p, steps, 1, H.device)[0].max()
    return float(1.0 / mu - lam), float(top)


class ExactInfluence(InfluenceEstimator):
    """score(t, i) = g_t^T (H + lambda I)^-1 g_i with H the explicit Hessian of the training objective.

    H = (1/n) sum_j Hess(loss_j) + weight_decay * I over the selected parameters, built from p
    Hessian-vector products (O(n p^2); for an ``nn.Sequential`` each layer's columns from HVPs of the
    layers from it on, the rest by symmetry: ``hessian.staged_hessian``), factored once as ``H + lambda I = L L^T`` (float64 Cholesky,
    O(p^3 / 3)). Both sides are whitened gradients ``L^-1 g`` (one triangular solve per row, O(p^2), in
    row blocks), so self-influence is ``|L^-1 g_i|^2`` from the stored train factors. The full
    spectrum (``eigenvalues_``, ``eigvalsh``) is computed only when asked for, or to report how
    indefinite H is when the factorisation fails; the manifest's extreme eigenvalues come from
    Lanczos. Memory O(p^2). The reference every approximation is tested against; only feasible up to
    ~10^4 parameters.
    """

    name = "exact"
    capabilities = Capabilities(damping="hessian", max_params=EXACT_MAX_PARAMS, exact_rtol=1e-12)
    config_class = ExactConfig
    summary = "explicit damped Hessian inverse (reference; small models only)"

    def fit(self, task: InfluenceTask) -> ExactInfluence:
        p = task.space.size
        if p > self.config.max_params:
            raise MethodError(
                f"exact: the model has {p:,} influence parameters, above influence.options.exact.max_params="
                f"{self.config.max_params:,}; restrict them (influence.params = \"last_layer\"), raise the limit, "
                "or use a scalable method"
            )
        super().fit(task)
        report = task.progress
        tick = None if report is None else (lambda k: report("Hessian columns", k, p))
        H = objective_hessian(task.model, task.space, task.x_train, task.y_train, task.weight_decay,
                              task.batch_size, loss_fn=task.loss_fn, progress=tick)
        lam = self.damping_for(task)
        self.hessian_, self.lam_ = H, lam
        self._spectrum: torch.Tensor | None = None
        A = H.clone()
        A.diagonal().add_(lam)
        chol, info = torch.linalg.cholesky_ex(A)
        if info:
            evals = self.eigenvalues_
            shifted_min = float(evals.min()) + lam
            if shifted_min <= 0:
                raise MethodError(
                    f"exact: H + lambda I is not positive definite (smallest eigenvalue {shifted_min:.3g} with "
                    f"lambda={lam}); raise influence.damping above {-evals.min().item():.3g}")
            raise MethodError(f"exact: the Cholesky factorisation of H + lambda I failed (smallest eigenvalue "
                              f"{shifted_min:.3g}, too close to 0 for float64); raise influence.damping")
        self.cholesky_ = chol  # [p, p] lower triangular, L L^T = H + lambda I
        self.extremes_ = extreme_eigenvalues(H, self.solve, lam)
        return self

    @property
    def eigenvalues_(self) -> torch.Tensor:
        """All eigenvalues of H ``[p]`` ascending (float64 ``eigvalsh``, computed on first access)."""
        if self._spectrum is None:
            self._spectrum = torch.linalg.eigvalsh(self.hessian_)
        return self._spectrum

    def whiten(self, g: torch.Tensor) -> torch.Tensor:
        """``L^-1 g_b`` for the rows of ``g [b, p]`` -> ``[b, p]`` float64 (one triangular solve, row blocks),
        so that ``whiten(g_t) . whiten(g_i) = g_t^T (H + lambda I)^-1 g_i``."""
        g = g.to(torch.float64)
        out = torch.empty_like(g)
        for s in range(0, len(g), SOLVE_BLOCK):
            out[s:s + SOLVE_BLOCK] = torch.linalg.solve_triangular(self.cholesky_, g[s:s + SOLVE_BLOCK].T,
                                                                   upper=False).T
        return out

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        """``(H + lambda I)^-1 g_b`` for the rows of ``g [b, p]`` -> ``[b, p]`` float64."""
        w = self.whiten(g)
        return torch.linalg.solve_triangular(self.cholesky_.mT, w.T, upper=True).T

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``L^-1 g_i`` ``[b, p]`` float64 (the whitened gradients)."""
        return self.whiten(self._require_fit().gradients(x, y))

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``L^-1 g_t`` ``[b, p]`` float64: scores are ``query @ train.T``."""
        return self.whiten(self._require_fit().gradients(x, y))

    def self_influence(self, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor | None = None) -> torch.Tensor:
        """``|L^-1 g_i|^2 = g_i^T (H + lambda I)^-1 g_i`` ``[b]``; from the stored train factors when they
        are float64 (no gradient pass, no solve)."""
        w = train if train is not None and train.dtype == torch.float64 else self.train_factors(x, y)
        return (w * w).sum(dim=1)

    def fit_info(self) -> dict[str, Any]:
        lo, hi = self.extremes_
        return {"n_params": int(self.hessian_.shape[0]), "hessian_min_eigenvalue": lo, "hessian_max_eigenvalue": hi,
                "factorization": "cholesky"}
