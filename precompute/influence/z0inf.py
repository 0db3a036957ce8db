"""Z0-Inf (Kokhlikyan, Chaudhuri & Mahloujifar 2025): zeroth-order influence from loss values at the
saved checkpoints: no gradients, no Hessian."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call, vmap

from precompute.errors import ConfigError, MethodError
from precompute.hessian import activation_size
from precompute.influence._common import as_model_dtype
from precompute.influence.base import Capabilities, InfluenceEstimator, InfluenceTask, MethodConfig

#: activation floats one vmapped call over directions may touch (directions x samples x activations);
#: digits CNN, 512 rows x 257 directions, 1 thread: 50 s in one call, 19 s at 12 M, 8-12 s at 1-6 M
WORK_BUDGET = 3_000_000


@dataclass
class Z0InfConfig(MethodConfig):
    """``directions``: random directions per checkpoint (K; capped at p). ``trajectory``: also use the
    displacement from the previous saved checkpoint (the direction training moved in). ``step``: the
    finite-difference step h along each unit direction (parameter units). ``seed``: seeds the directions.
    ``damping`` is not used."""

    directions: int = 256
    trajectory: bool = True
    step: float = 1e-3
    seed: int = 0

    def validate(self) -> Z0InfConfig:
        super().validate()
        if not isinstance(self.directions, int) or isinstance(self.directions, bool) or self.directions < 1:
            raise ConfigError(f"influence.options.z0inf.directions: must be an integer >= 1 (got {self.directions!r})")
        if not isinstance(self.step, int | float) or isinstance(self.step, bool) or not 0 < self.step < 1:
            raise ConfigError(f"influence.options.z0inf.step: must be a number in (0, 1) (got {self.step!r})")
        if not isinstance(self.trajectory, bool):
            raise ConfigError(f"influence.options.z0inf.trajectory: must be true or false (got {self.trajectory!r})")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"influence.options.z0inf.seed: must be an integer (got {self.seed!r})")
        return self


class Z0Inf(InfluenceEstimator):
    """score(t, i) = sum_c lr_c (p / K_c) sum_k d_t(c, k) d_i(c, k), from loss values alone.

    At each saved checkpoint theta_c, ``d_z(c, k) = [L(z, theta_c + h q_k) - L(z, theta_c - h q_k)] / 2h``
    is the finite-difference directional derivative of sample z's loss along K_c orthonormal directions
    q_k (seeded random ones, plus the displacement from the previous checkpoint when ``trajectory``).
    That is the gradient fitted by least squares in the span Q_c of the directions, so the score is a
    zeroth-order TracInCP: ``sum_c lr_c (p / K_c) g_t^T Q_c Q_c^T g_i`` exactly for quadratic losses
    (central differences are exact there), O(h^2) otherwise; with K_c = p it is TracInCP itself. Self-
    influence is ``sum_c lr_c (p / K_c) |Q_c^T g_i|^2``.

    Cost: 2 K C forward passes per sample (C checkpoints), O(C K p) per sample in flops, no backward
    pass; memory O(C K p) for the directions, O(C K) per stored row. Use it when backward passes are
    unavailable or too costly in memory (a non-differentiable loss, a very large model), as a cheap
    self-influence (outlier) signal; for train-test rankings it is a noisy projection of TracIn.
    """

    name = "z0inf"
    config_class = Z0InfConfig
    capabilities = Capabilities(needs_checkpoints=True)
    summary = "Z0-Inf: zeroth-order TracIn from loss values at the checkpoints (no gradients)"
    quick_options = {"directions": 48}

    def fit(self, task: InfluenceTask) -> Z0Inf:
        if not task.checkpoints:
            raise MethodError("z0inf: the run has no saved checkpoints; set train.checkpoints >= 1")
        super().fit(task)
        p = task.space.size
        k = min(self.config.directions, p)
        dtype = next(task.model.parameters()).dtype
        dev = task.x_train.device
        self.bases_: list[torch.Tensor] = []  # per checkpoint, orthonormal directions [K_c, p]
        self.params_: list[dict[str, torch.Tensor]] = []
        prev: torch.Tensor | None = None
        for c, ckpt in enumerate(task.checkpoints):
            params = task.checkpoint_params(ckpt)
            flat = task.space.flatten(params).to(torch.float64)
            gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + c)
            cols = [torch.randn(p, k, generator=gen, dtype=torch.float64)]
            if self.config.trajectory and prev is not None and float((flat - prev).norm()) > 0:
                cols.insert(0, (flat - prev).to("cpu")[:, None])  # the trajectory direction comes first
            q, _ = torch.linalg.qr(torch.cat(cols, dim=1)[:, :p])
            self.bases_.append(q.T.contiguous().to(device=dev, dtype=dtype))
            self.params_.append(params)
            prev = flat
        self.frozen_ = task.space.frozen(task.model)
        self.act_: int | None = None
        return self

    def _losses(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self._require_fit()
        return task.loss_fn(functional_call(task.model, {**self.frozen_, **params}, (x,)), y)  # [b]

    def _factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self._require_fit()
        h = float(self.config.step)
        p = task.space.size
        parts = []
        with torch.no_grad():
            for ckpt, params, q in zip(task.checkpoints, self.params_, self.bases_, strict=True):
                def shifted(v: torch.Tensor, params=params) -> torch.Tensor:
                    d = task.space.unflatten(h * v)
                    up = self._losses({n: params[n] + d[n] for n in params}, x, y)
                    down = self._losses({n: params[n] - d[n] for n in params}, x, y)
                    return (up - down) / (2 * h)
                step = self._chunk(len(x))
                d = torch.cat([vmap(shifted)(q[k:k + step]) for k in range(0, len(q), step)]).T  # [b, K_c]
                parts.append(math.sqrt(ckpt.lr * p / len(q)) * d)
        return as_model_dtype(task, torch.cat(parts, dim=1))

    def _chunk(self, b: int) -> int:
        """Directions per vmapped call: ``WORK_BUDGET`` activation floats over ``b`` samples (one call over
        all 257 directions of a 512-row batch of the digits CNN touches ~250 M floats)."""
        task = self._require_fit()
        if self.act_ is None:
            self.act_ = activation_size(task.model, task.x_train[:1])
        return max(1, WORK_BUDGET // (max(b, 1) * self.act_))

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._factors(x, y)

    def self_influence(self, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor | None = None) -> torch.Tensor:
        """``|f_i|^2`` ``[b]``: the query and train factors are the same rows, so the stored ones serve."""
        t = self._factors(x, y) if train is None else train
        return (t * t).sum(dim=1)

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._factors(x, y)

    def fit_info(self) -> dict[str, Any]:
        return {"directions": [len(q) for q in self.bases_], "step": self.config.step}
