"""Arnoldi influence (Schioppa et al. 2022): top-k eigenpairs of H from a Krylov basis, low-rank inverse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from precompute.errors import ConfigError, MethodError
from precompute.influence._common import Matvec, as_model_dtype, damped_hvp, gradients64
from precompute.influence._spectrum import arnoldi_eigs
from precompute.influence.base import Capabilities, InfluenceEstimator, InfluenceTask, MethodConfig

__all__ = ["ArnoldiConfig", "ArnoldiInfluence", "arnoldi_eigs"]  # arnoldi_eigs: re-exported (lissa, exact)

RESIDUALS = ("gradient", "mean", "damping", "drop")


@dataclass
class ArnoldiConfig(MethodConfig):
    """``n_iter``: Krylov dimension (HVPs, clipped to p); ``rank``: eigenpairs kept (largest |eigenvalue|,
    clipped to n_iter); ``seed``: start vector and probes; ``residual``: the one eigenvalue mu_r given to
    the directions outside the kept eigenvectors U (they weigh 1 / (mu_r + lambda)): ``"gradient"`` (the
    default) the curvature that the training gradients see there, the Rayleigh quotient
    sum_i (P g_i)^T H (P g_i) / sum_i |P g_i|^2 over ``residual_probes`` seeded training samples
    (P = I - U U^T; one batched HVP pass); ``"mean"`` the plain mean eigenvalue tr(P H P) / (p - k)
    (Hutchinson with ``residual_probes`` projected Rademacher probes); ``"damping"`` mu_r = 0 (weight
    1 / lambda: the scores collapse towards gradient dot as lambda -> 0); ``"drop"`` ignores them (the
    paper; k-dim factors). ``n_iter = rank = p`` is the exact inverse in every mode."""

    n_iter: int = 200
    rank: int = 100
    seed: int = 0
    residual: str = "gradient"
    residual_probes: int = 64

    def validate(self) -> ArnoldiConfig:
        super().validate()
        for key in ("n_iter", "rank"):
            v = getattr(self, key)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"influence.options.arnoldi.{key}: must be an integer >= 1 (got {v!r})")
        if self.rank > self.n_iter:
            raise ConfigError(f"influence.options.arnoldi.rank: must be <= n_iter={self.n_iter} (got {self.rank})")
        if self.residual not in RESIDUALS:
            raise ConfigError(f"influence.options.arnoldi.residual: must be one of {', '.join(RESIDUALS)} "
                              f"(got {self.residual!r})")
        if not isinstance(self.residual_probes, int) or self.residual_probes < 1:
            raise ConfigError(f"influence.options.arnoldi.residual_probes: must be an integer >= 1 "
                              f"(got {self.residual_probes!r})")
        return self


class ArnoldiInfluence(InfluenceEstimator):
    """score(t, i) = sum_k (u_k . g_t)(u_k . g_i) / (mu_k + lambda) + g_t^T (I - U U^T) g_i / (mu_r + lambda).

    (mu_k, u_k) are the top-``rank`` (largest) Ritz pairs of H from ``n_iter`` Arnoldi steps (one
    single-vector HVP each; cost O(n_iter n p + n_iter^2 p), memory O(n_iter p)). The rest of the
    space gets one eigenvalue mu_r (``residual``): by default the curvature the training gradients
    see there (their Rayleigh quotient after projecting out U), so a small lambda does not blow the
    unexplored directions up to weight 1 / lambda (``"damping"``: mu_r = 0) and the scores stay a
    preconditioned, not a plain gradient-dot, estimate; Schioppa et al. (2022) drop it (``"drop"``).
    Kept Ritz values with mu_k + lambda <= 0 (negative curvature of a non-convex model) are moved to
    the residual. New test points cost one gradient each. Use it for large p when the spectrum is
    dominated by a few directions; ``rank = n_iter = p`` reproduces ``exact``.
    """

    name = "arnoldi"
    capabilities = Capabilities(damping="hessian", exact_spearman=0.9)
    quick_options: ClassVar[dict[str, Any]] = {"n_iter": 40, "rank": 20}
    config_class = ArnoldiConfig
    summary = "top-k Hessian eigenpairs from Arnoldi iteration, low-rank inverse"

    def fit(self, task: InfluenceTask) -> ArnoldiInfluence:
        super().fit(task)
        self.lam_ = self.damping_for(task)
        p = task.space.size
        hvp = damped_hvp(task, 0.0)
        evals, evecs = arnoldi_eigs(hvp, p, self.config.n_iter, self.config.seed, task.x_train.device)
        order = evals.argsort(descending=True)[:self.config.rank]
        order = order[evals[order] + self.lam_ > 0]  # negative curvature goes to the residual
        if self.config.residual in ("damping", "drop") and len(order) < min(self.config.rank, len(evals)):
            raise MethodError(f"arnoldi: a kept eigenvalue of H + lambda I is {(evals.min() + self.lam_).item():.3g}"
                              f" <= 0 (lambda={self.lam_}); raise influence.damping above {-evals.min().item():.3g}, "
                              "use \"auto\" or residual = \"gradient\"")
        self.eigenvalues_, self.eigenvectors_ = evals[order], evecs[:, order]  # [k], [p, k]
        self.inv_ = 1.0 / (self.eigenvalues_ + self.lam_)
        k = self.eigenvalues_.numel()
        self.keep_residual_ = self.config.residual != "drop" and k < p
        self.residual_eigenvalue_ = 0.0
        if self.keep_residual_ and self.config.residual in ("gradient", "mean"):
            self.residual_eigenvalue_ = self._residual_eigenvalue(task, hvp, p)
        self.residual_inv_ = 0.0
        if self.keep_residual_:
            shift = self.residual_eigenvalue_ + self.lam_
            if shift <= 0:
                raise MethodError(f"arnoldi: the residual directions' eigenvalue + lambda is {shift:.3g} <= 0 "
                                  f"(lambda={self.lam_}); set influence.damping > 0 (or \"auto\"), residual = "
                                  "\"gradient\" or residual = \"drop\"")
            self.residual_inv_ = 1.0 / shift
        return self

    def _residual_eigenvalue(self, task: InfluenceTask, hvp: Matvec, p: int) -> float:
        """mu_r on the complement P = I - U U^T of the kept eigenvectors, from ``residual_probes`` vectors
        z projected by P: ``"gradient"``: z = seeded training gradients, mu_r = sum z^T H z / sum |z|^2
        (the curvature the scores' own gradients see there); ``"mean"``: z = Rademacher probes,
        mu_r = mean z^T H z / (p - k) (E = tr(P H P) / (p - k)). Clamped at 0 (a non-convex
        complement is treated as flat)."""
        gen = torch.Generator().manual_seed(self.config.seed + 1)
        m = self.config.residual_probes
        if self.config.residual == "gradient":
            idx = torch.randperm(task.n_train, generator=gen)[:m].to(task.x_train.device)
            z = gradients64(task, task.x_train[idx], task.y_train[idx])
        else:
            z = (torch.randint(0, 2, (m, p), generator=gen) * 2 - 1).to(torch.float64).to(task.x_train.device)
        u = self.eigenvectors_
        z = z - (z @ u) @ u.T
        quad = float((z * hvp(z)).sum())
        if self.config.residual == "gradient":
            norm = float((z * z).sum())
            return max(quad / norm, 0.0) if norm > 0 else 0.0
        return max(quad / len(z) / (p - u.shape[1]), 0.0)

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self._require_fit()
        if self.keep_residual_:
            return task.gradients(x, y)
        return as_model_dtype(task, gradients64(task, x, y) @ self.eigenvectors_)

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self._require_fit()
        g = gradients64(task, x, y)
        coef = g @ self.eigenvectors_  # [b, k]
        if not self.keep_residual_:
            return as_model_dtype(task, coef * self.inv_)
        r = self.residual_inv_
        return as_model_dtype(task, g * r + (coef * (self.inv_ - r)) @ self.eigenvectors_.T)

    def fit_info(self) -> dict[str, Any]:
        ev = self.eigenvalues_
        return {"damping": self.lam_, "rank": int(ev.numel()), "eigenvalue_max": float(ev.max()),
                "eigenvalue_min_kept": float(ev.min()), "residual": self.config.residual,
                "residual_eigenvalue": self.residual_eigenvalue_ if self.keep_residual_ else None}
