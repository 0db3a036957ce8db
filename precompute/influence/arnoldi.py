"""Arnoldi influence (Schioppa et al. 2022): top-k eigenpairs of H from a Krylov basis, low-rank inverse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from precompute.errors import ConfigError, MethodError
from precompute.influence._common import Matvec, as_model_dtype, damped_hvp, gradients64
from precompute.influence.base import Capabilities, InfluenceEstimator, InfluenceTask, MethodConfig


@dataclass
class ArnoldiConfig(MethodConfig):
    """``n_iter``: Krylov dimension (HVPs, clipped to p); ``rank``: eigenpairs kept (largest |eigenvalue|,
    clipped to n_iter); ``seed``: start vector; ``residual``: what to do with the directions outside
    the kept eigenvectors: ``"damping"`` treats their eigenvalue as 0 (weight 1 / lambda, the default:
    far better rankings when lambda is not tiny), ``"drop"`` ignores them (the paper; k-dim factors).
    ``n_iter = rank = p`` is the exact inverse either way."""

    n_iter: int = 200
    rank: int = 100
    seed: int = 0
    residual: str = "damping"

    def validate(self) -> ArnoldiConfig:
        super().validate()
        for key in ("n_iter", "rank"):
            v = getattr(self, key)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"influence.options.arnoldi.{key}: must be an integer >= 1 (got {v!r})")
        if self.rank > self.n_iter:
            raise ConfigError(f"influence.options.arnoldi.rank: must be <= n_iter={self.n_iter} (got {self.rank})")
        if self.residual not in ("damping", "drop"):
            raise ConfigError(f"influence.options.arnoldi.residual: must be \"damping\" or \"drop\" "
                              f"(got {self.residual!r})")
        return self


def arnoldi_eigs(matvec: Matvec, p: int, n_iter: int, seed: int = 0,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz pairs of a symmetric operator from ``n_iter`` Arnoldi steps: ``(evals [m], evecs [p, m])``.

    Full re-orthogonalisation (twice) keeps the basis orthonormal in float64; on breakdown (an
    invariant subspace) the iteration restarts from a fresh random vector orthogonal to the basis.
    """
    gen = torch.Generator().manual_seed(seed)
    m = min(n_iter, p)
    q = torch.zeros(m, p, dtype=torch.float64, device=device)
    h = torch.zeros(m, m, dtype=torch.float64, device=device)
    v = torch.randn(p, generator=gen, dtype=torch.float64).to(device)
    q[0] = v / v.norm()
    for j in range(m):
        w = matvec(q[j:j + 1])[0]
        for _ in range(2):
            c = q[:j + 1] @ w
            h[:j + 1, j] += c
            w = w - c @ q[:j + 1]
        if j + 1 == m:
            break
        nrm = w.norm()
        if nrm > 1e-10 * h[:j + 1, j].abs().max().clamp_min(1e-300):
            h[j + 1, j] = nrm
            q[j + 1] = w / nrm
        else:  # invariant subspace found: continue from a random direction orthogonal to the basis
            r = torch.randn(p, generator=gen, dtype=torch.float64).to(device)
            for _ in range(2):
                r = r - (q[:j + 1] @ r) @ q[:j + 1]
            q[j + 1] = r / r.norm()
    evals, vecs = torch.linalg.eigh(0.5 * (h + h.T))
    return evals, q.T @ vecs


class ArnoldiInfluence(InfluenceEstimator):
    """score(t, i) = sum_k (u_k . g_t)(u_k . g_i) / (mu_k + lambda) [+ g_t^T (I - U U^T) g_i / lambda].

    (mu_k, u_k) are the top-``rank`` (by |mu|) Ritz pairs of H from ``n_iter`` Arnoldi steps (one
    single-vector HVP each; cost O(n_iter n p + n_iter^2 p), memory O(n_iter p)). Schioppa et al.
    (2022) drop the rest of the space (``residual = "drop"``: k-dim factors, O(k) per pair); the
    default keeps it with eigenvalue 0, i.e. weight 1/lambda (p-dim factors). New test points cost
    one gradient each. Use it for large p when the spectrum is dominated by a few directions;
    ``rank = n_iter = p`` reproduces ``exact``.
    """

    name = "arnoldi"
    capabilities = Capabilities(damping="hessian", exact_spearman=0.9)
    quick_options: ClassVar[dict[str, Any]] = {"n_iter": 40, "rank": 20}
    config_class = ArnoldiConfig
    summary = "top-k Hessian eigenpairs from Arnoldi iteration, low-rank inverse"

    def fit(self, task: InfluenceTask) -> ArnoldiInfluence:
        super().fit(task)
        self.lam_ = self.damping_for(task)
        evals, evecs = arnoldi_eigs(damped_hvp(task, 0.0), task.space.size, self.config.n_iter, self.config.seed,
                                    task.x_train.device)
        order = evals.abs().argsort(descending=True)[:self.config.rank]
        self.eigenvalues_, self.eigenvectors_ = evals[order], evecs[:, order]  # [k], [p, k]
        shifted = self.eigenvalues_ + self.lam_
        if (shifted <= 0).any():
            raise MethodError(f"arnoldi: a kept eigenvalue of H + lambda I is {shifted.min().item():.3g} <= 0 "
                              f"(lambda={self.lam_}); raise influence.damping above "
                              f"{-self.eigenvalues_.min().item():.3g} (or use \"auto\")")
        self.inv_ = 1.0 / shifted
        self.keep_residual_ = self.config.residual == "damping" and self.eigenvalues_.numel() < task.space.size
        if self.keep_residual_ and self.lam_ <= 0:
            raise MethodError("arnoldi: residual = \"damping\" weighs the unexplored directions by 1 / lambda, "
                              "so lambda must be > 0; set influence.damping > 0 (or \"auto\") or residual = \"drop\"")
        return self

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
        return as_model_dtype(task, g / self.lam_ + (coef * (self.inv_ - 1.0 / self.lam_)) @ self.eigenvectors_.T)

    def fit_info(self) -> dict[str, Any]:
        ev = self.eigenvalues_
        return {"damping": self.lam_, "rank": int(ev.numel()), "eigenvalue_max": float(ev.max()),
                "eigenvalue_min_kept": float(ev.min())}
