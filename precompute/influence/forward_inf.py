"""Forward-INF (Ko et al. 2024, "The Mirrored Influence Hypothesis"): fine-tune a copy of the model on
each test point, then measure every training sample's loss change with forward passes only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call, grad, vmap

from precompute.errors import ConfigError, MethodError
from precompute.hessian import hessian_cost, objective_hessian
from precompute.influence.base import Capabilities, InfluenceEstimator, InfluenceTask, MethodConfig

#: test rows whose fine-tuned copies are evaluated on a train chunk at once
ROW_BLOCK = 32
#: ``solver = "auto"`` takes the spectral solve up to this many parameters (a float64 ``eigh`` of H_B:
#: 7 s at p = 3,658 on 2 cores, and it grows as p^3) when forming H_B costs less than the fine-tunes
SPECTRAL_MAX_PARAMS = 6144
SOLVERS = ("auto", "finetune", "spectral")


def _number(value: Any, field: str, low: float, low_ok: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (value >= low if low_ok else value > low)
    if not ok:
        raise ConfigError(f"influence.options.forward_inf.{field}: must be a number {'>=' if low_ok else '>'} {low} "
                          f"(got {value!r})")


@dataclass
class ForwardInfConfig(MethodConfig):
    """``steps``/``lr``: gradient steps of the fine-tune on the test point (``lr = "auto"``: 1 / the largest
    eigenvalue of ``anchor * H_B`` by power iteration, 1.0 without an anchor). ``test_weight`` (epsilon):
    how strongly the test point is weighted (small: a linear response). ``anchor``: weight of the
    training objective kept in the fine-tune (0 = fine-tune on the test point alone, the paper's recipe;
    1 = the mirrored influence function of a convex model), estimated on ``anchor_samples`` seeded
    training samples. ``solver``: ``"finetune"`` runs the ``steps`` gradient steps per row;
    ``"spectral"`` takes their eps -> 0 limit in closed form from the eigendecomposition of H_B (the same
    truncated series, no per-row fine-tune); ``"auto"``: spectral when an anchor is set, p <= 6,144 and
    forming H_B costs less than the fine-tunes. ``damping`` is not used."""

    steps: int = 50
    lr: float | str = "auto"
    test_weight: float = 1e-3
    anchor: float = 1.0
    anchor_samples: int = 512
    seed: int = 0
    solver: str = "auto"

    def validate(self) -> ForwardInfConfig:
        super().validate()
        for f in ("steps", "anchor_samples"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"influence.options.forward_inf.{f}: must be an integer >= 1 (got {v!r})")
        if self.lr != "auto":
            _number(self.lr, "lr", 0, False)
        _number(self.test_weight, "test_weight", 0, False)
        _number(self.anchor, "anchor", 0, True)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"influence.options.forward_inf.seed: must be an integer (got {self.seed!r})")
        if self.solver not in SOLVERS:
            raise ConfigError(f"influence.options.forward_inf.solver: must be one of {', '.join(SOLVERS)} "
                              f"(got {self.solver!r})")
        return self


class ForwardInf(InfluenceEstimator):
    """score(t, i) = [L(z_i, theta - D_t) - L(z_i, theta + D_t)] / (2 eps): how much fitting t lowers i's loss.

    D_t is the displacement of ``steps`` gradient steps (rate eta) from the trained theta on
    ``eps L(z_t) + a [L_B(theta) - grad L_B(theta_hat) . theta]`` (L_B: the training objective on a
    fixed subset B; the linear term keeps theta_hat stationary, so only curvature pulls back). Positive =
    proponent: training on t lowers i's loss, and by the mirrored influence hypothesis training on i
    lowers t's. To first order in eps: with a = 0, ``steps * eta * g_t . g_i`` (a gradient dot product);
    with a > 0, ``g_i^T eta sum_k (I - eta a H_B)^k g_t`` -> ``g_i^T (a H_B)^-1 g_t`` (the influence
    function) as steps grow, for eta < 2 / (a lambda_max). The central difference in D cancels the
    O(eps) curvature of L(z_i) along D.

    Cost per test point: ``steps`` gradients (plus ``steps * |B|`` with an anchor); per (test, train)
    pair two forward passes: O(n_test n p) flops with no per-sample training gradient. Train rows are
    stored as their inputs and labels (width = input size + 1). Use it when the training set is large
    and test points few, or backward passes over the training data are too costly.
    """

    name = "forward_inf"
    config_class = ForwardInfConfig
    capabilities = Capabilities()
    summary = "Forward-INF: fine-tune on the test point, forward passes over the training set"
    quick_options: dict[str, Any] = {"steps": 30}

    def fit(self, task: InfluenceTask) -> ForwardInf:
        super().fit(task)
        self.theta_ = task.space.params(task.model)
        self.frozen_ = task.space.frozen(task.model)
        self.x_shape_ = tuple(task.x_train.shape[1:])
        self.x_dtype_ = task.x_train.dtype
        self.anchor_ = None
        self.solver_ = "finetune"
        self.response_: torch.Tensor | None = None
        self.spectrum_: dict[str, Any] = {}
        if self.config.anchor > 0:
            m = min(self.config.anchor_samples, task.n_train)
            gen = torch.Generator().manual_seed(self.config.seed)
            idx = torch.randperm(task.n_train, generator=gen)[:m].to(task.y_train.device)
            xb, yb = task.x_train[idx], task.y_train[idx]
            g0 = grad(lambda d: self._anchor_loss(d, xb, yb))(torch.zeros(task.space.size, dtype=self._dtype(),
                                                                         device=xb.device))
            self.anchor_ = (xb, yb, g0.detach())
            self.solver_ = self._pick_solver(task)
        if self.anchor_ is None:
            self.lr_ = 1.0
        elif self.solver_ == "spectral":
            H = self._anchor_hessian()
            self.lr_ = 1.0 / self._top_eigenvalue(lambda v: H @ v, torch.float64)
        else:
            self.lr_ = 1.0 / self._top_eigenvalue(self._anchor_hvp(), self._dtype())
        if self.config.lr != "auto":
            self.lr_ = float(self.config.lr)
        if self.solver_ == "spectral":
            self.response_ = self._response(H)
        return self

    def _pick_solver(self, task: InfluenceTask) -> str:
        if self.config.solver != "auto":
            return self.config.solver
        p = task.space.size
        # forming H_B: hessian_cost HVPs of B (~2 gradients each) against steps gradients of B per fine-tune
        # (self-influence alone fine-tunes every training row)
        cheap = 2 * hessian_cost(task.model, task.space, task.x_train[:1]) <= self.config.steps * task.n_train
        return "spectral" if p <= SPECTRAL_MAX_PARAMS and cheap else "finetune"

    def _anchor_hvp(self):
        assert self.anchor_ is not None
        xb, yb, _ = self.anchor_
        zero = torch.zeros(self._require_fit().space.size, dtype=self._dtype(), device=xb.device)
        g = grad(lambda d: self._anchor_loss(d, xb, yb))
        return lambda v: torch.func.jvp(g, (zero,), (v.to(zero.dtype),))[1]

    def _anchor_hessian(self) -> torch.Tensor:
        """H_B ``[p, p]`` float64: the Hessian of the anchor objective (mean loss on B + the L2 term)."""
        task = self._require_fit()
        assert self.anchor_ is not None
        xb, yb, _ = self.anchor_
        return objective_hessian(task.model, task.space, xb, yb, task.weight_decay, task.batch_size,
                                 loss_fn=task.loss_fn)

    def _top_eigenvalue(self, hvp, dtype: torch.dtype, iters: int = 30) -> float:
        """Largest eigenvalue of ``anchor * H_B`` (power iteration; H_B psd near the optimum)."""
        p = self._require_fit().space.size
        v = torch.randn(p, generator=torch.Generator().manual_seed(self.config.seed), dtype=self._dtype())
        v = v.to(device=self.anchor_[0].device if self.anchor_ else None, dtype=dtype)
        lam = 0.0
        for _ in range(iters):
            v = v / v.norm()
            hv = hvp(v).to(dtype)
            lam = float(v @ hv)
            v = hv
        if not lam > 0:
            raise MethodError(f"forward_inf: the anchor's curvature is not positive ({lam:.3g}); set "
                              "influence.options.forward_inf.lr to a number, or anchor = 0")
        return float(self.config.anchor) * lam

    def _response(self, H: torch.Tensor) -> torch.Tensor:
        """``M [p, p]`` float64 with ``D_t = -eps M g_t`` the eps -> 0 limit of the fine-tune: the steps
        ``delta <- delta - eta (eps g_t + A delta)`` (A = anchor H_B) sum to ``M = eta sum_{k<K} (I - eta A)^k``,
        on A's eigenvalues mu ``(1 - (1 - eta mu)^K) / mu`` (``K eta`` at mu = 0)."""
        K, lr = self.config.steps, self.lr_
        mu, V = torch.linalg.eigh(float(self.config.anchor) * H)
        x = lr * mu
        small = x.abs() < 1e-6
        f = torch.where(small, K * lr * (1 - 0.5 * (K - 1) * x), (1 - (1 - x) ** K) / torch.where(small, 1.0, mu))
        self.spectrum_ = {"min_eigenvalue": float(mu[0]), "max_eigenvalue": float(mu[-1]),
                          "negative_eigenvalues": int((mu < 0).sum())}
        return (V * f) @ V.T

    def _dtype(self) -> torch.dtype:
        return next(iter(self.theta_.values())).dtype

    def _loss(self, delta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses ``[b]`` at ``theta + delta`` (``delta [p]`` flat)."""
        task = self._require_fit()
        d = task.space.unflatten(delta)
        params = {n: self.theta_[n] + d[n] for n in self.theta_}
        return task.loss_fn(functional_call(task.model, {**self.frozen_, **params}, (x,)), y)

    def _anchor_loss(self, delta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self._require_fit()
        theta = task.space.flatten(self.theta_)
        return self._loss(delta, x, y).mean() + 0.5 * task.weight_decay * ((theta + delta) ** 2).sum()

    def _displacement(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """D for one test point (``x [*input]``, ``y []``): ``[p]``."""
        eps, a = float(self.config.test_weight), float(self.config.anchor)

        def objective(delta: torch.Tensor) -> torch.Tensor:
            val = eps * self._loss(delta, x[None], y[None]).sum()
            if self.anchor_ is not None:
                xb, yb, g0 = self.anchor_
                val = val + a * (self._anchor_loss(delta, xb, yb) - g0 @ delta)
            return val

        delta = torch.zeros(self._require_fit().space.size, dtype=self._dtype(), device=x.device)
        for _ in range(self.config.steps):
            delta = delta - self.lr_ * grad(objective)(delta)
        return delta

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The fine-tuned displacements ``[b, p]`` (spectral: ``-eps g_t M`` from the per-sample gradients)."""
        if self.response_ is not None:
            g = self._require_fit().gradients(x, y).to(torch.float64)
            return (-float(self.config.test_weight) * (g @ self.response_)).to(self._dtype())
        return vmap(self._displacement)(x, y).detach()

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Inputs and labels, ``[b, input size + 1]`` (the training side is forward passes only)."""
        flat = x.reshape(len(x), -1).to(self._dtype())
        return torch.cat([flat, y.to(flat.dtype)[:, None]], dim=1)

    def _rows(self, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = train[:, :-1].reshape(len(train), *self.x_shape_).to(self.x_dtype_)
        return x, train[:, -1].round().long()

    def scores(self, query: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
        """``[b_test, b_train]`` from forward passes of each fine-tuned copy over the train rows."""
        x, y = self._rows(train)
        eps = float(self.config.test_weight)
        out = []
        with torch.no_grad():
            for s in range(0, len(query), ROW_BLOCK):
                q = query[s:s + ROW_BLOCK]
                down = vmap(lambda d: self._loss(-d, x, y))(q)
                up = vmap(lambda d: self._loss(d, x, y))(q)
                out.append((down - up) / (2 * eps))
        return torch.cat(out) if out else query.new_zeros((0, len(train)))

    def self_influence(self, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor | None = None) -> torch.Tensor:
        q = self.query_factors(x, y)
        eps = float(self.config.test_weight)
        with torch.no_grad():
            one = vmap(lambda d, xi, yi: self._loss(d, xi[None], yi[None])[0])
            return (one(-q, x, y) - one(q, x, y)) / (2 * eps)

    def fit_info(self) -> dict[str, Any]:
        return {"lr": self.lr_, "anchor_samples": 0 if self.anchor_ is None else len(self.anchor_[1]),
                "solver": self.solver_, **self.spectrum_}
