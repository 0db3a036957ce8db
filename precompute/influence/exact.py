"""Exact influence with the explicitly formed damped Hessian."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from precompute.errors import ConfigError, MethodError
from precompute.hessian import create_hvp_function, explicit_hessian
from precompute.influence.base import Capabilities, InfluenceEstimator, InfluenceTask, MethodConfig

#: the default limit: H is p x p float64 (10^4 parameters = 800 MB)
EXACT_MAX_PARAMS = 10_000


@dataclass
class ExactConfig(MethodConfig):
    """``max_params``: refuse above this many influence parameters (H is p x p float64)."""

    max_params: int = EXACT_MAX_PARAMS

    def validate(self) -> ExactConfig:
        super().validate()
        if not isinstance(self.max_params, int) or self.max_params < 1:
            raise ConfigError(f"influence.options.exact.max_params: must be an integer >= 1 (got {self.max_params!r})")
        return self


class ExactInfluence(InfluenceEstimator):
    """score(t, i) = g_t^T (H + lambda I)^-1 g_i with H the explicit Hessian of the training objective.

    H = (1/n) sum_j Hess(loss_j) + weight_decay * I over the selected parameters, built from p
    Hessian-vector products (O(n p^2)), eigendecomposed in float64 (O(p^3)); memory O(p^2). The
    reference every approximation is tested against; only feasible up to ~10^4 parameters.
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
        hvp = create_hvp_function(task.model, task.space, task.x_train, task.y_train, task.weight_decay, task.batch_size,
                                  loss_fn=task.loss_fn)
        dtype = next(task.model.parameters()).dtype
        dev = task.x_train.device
        H = explicit_hessian(hvp, p, dtype=dtype, device=dev).to(torch.float64)
        evals, evecs = torch.linalg.eigh(H)
        lam = self.damping_for(task)
        shifted = evals + lam
        if shifted.min() <= 0:
            raise MethodError(
                f"exact: H + lambda I is not positive definite (smallest eigenvalue {shifted.min().item():.3g} with "
                f"lambda={lam}); raise influence.damping above {-evals.min().item():.3g}"
            )
        self.hessian_ = H
        self.eigenvalues_ = evals
        self.inverse_ = (evecs / shifted) @ evecs.T  # [p, p], (H + lambda I)^-1
        return self

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self._require_fit()
        return task.gradients(x, y).to(torch.float64)

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self._require_fit()
        return task.gradients(x, y).to(torch.float64) @ self.inverse_

    def fit_info(self) -> dict[str, Any]:
        ev = self.eigenvalues_
        return {"n_params": int(ev.numel()), "hessian_min_eigenvalue": float(ev.min()),
                "hessian_max_eigenvalue": float(ev.max())}
