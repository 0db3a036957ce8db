"""LiSSA (Agarwal et al. 2017; Koh & Liang 2017): stochastic Neumann series for (H + lambda I)^-1 g."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from precompute.errors import ConfigError, MethodError
from precompute.influence._common import as_model_dtype, damped_hvp, gradients64
from precompute.influence.arnoldi import arnoldi_eigs
from precompute.influence.base import Capabilities, InfluenceEstimator, InfluenceTask, MethodConfig

#: work per query of the default ("auto") depth x batch_size: depth x batch_size x the model's
#: forward multiply-adds per sample (:func:`sample_cost`) stays under it. 2e8 gives digits-logreg
#: (cost 2,400, the floor) depth 1000 x batch 83, the digits MLP (2,410) 1000 x 82 and caps the digits
#: CNN (25,408; its per-sample HVP costs ~15-25x the MLP's on 2 cores, more than its multiply-adds
#: say) at 245 x 32. Measured at 1 thread (docs/benchmarks.md): logreg 27 s, MLP 57 s, CNN 82 s
#: (~50 s estimated on 2 quiet cores), self-influence included, against 93 s / ~90 s / ~1,000 s before
QUERY_WORK_BUDGET = 2e8
#: floor of the cost per sample: below a few thousand multiply-adds a per-sample HVP costs about the same
#: (framework overhead: digits-logreg's 650 cost 0.74 us per sample-vector on 1 thread, the MLP's 2,410
#: 0.73 us)
MIN_SAMPLE_COST = 2400
#: bounds of the "auto" rule: batch_size shrinks first (down to AUTO_MIN_BATCH), then depth
AUTO_MAX_DEPTH, AUTO_MIN_DEPTH, AUTO_MAX_BATCH, AUTO_MIN_BATCH = 1000, 50, 256, 32


@dataclass
class LiSSAConfig(MethodConfig):
    """``depth``: recursion steps; ``scale``: s > largest eigenvalue of H + lambda I, or ``"auto"`` =
    2 x the top eigenvalue from 20 Lanczos steps on the full H; ``repeats``: independent runs averaged;
    ``batch_size``: training samples per stochastic HVP (None = the full training set, deterministic);
    ``depth``/``batch_size`` ``"auto"``: from a work budget per query (``QUERY_WORK_BUDGET``, see
    :func:`auto_depth_batch`); ``tol``: relative change of the estimate over the last 10% of steps above
    which it warns; ``seed``; ``self_depth``: recursion steps for self-influence, where every training
    sample is a query (None = ``depth // 10``; its own convergence check is reported as
    ``self_max_relative_change``); ``self_block``: training samples per self-influence recursion (one
    batched HVP per step)."""

    depth: int | str = "auto"
    scale: float | str = "auto"
    repeats: int = 1
    batch_size: int | str | None = "auto"
    tol: float = 1e-2
    seed: int = 0
    self_depth: int | None = None
    self_block: int = 2048

    def validate(self) -> LiSSAConfig:
        super().validate()
        for key in ("depth", "repeats", "self_block"):
            v = getattr(self, key)
            if key == "depth" and v == "auto":
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                more = ' or "auto"' if key == "depth" else ""
                raise ConfigError(f"influence.options.lissa.{key}: must be an integer >= 1{more} (got {v!r})")
        if self.scale != "auto" and (not isinstance(self.scale, int | float) or self.scale <= 0):
            raise ConfigError(f"influence.options.lissa.scale: must be a number > 0 or \"auto\" (got {self.scale!r})")
        if self.batch_size not in (None, "auto") and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"influence.options.lissa.batch_size: must be an integer >= 1 or \"auto\" "
                              f"(got {self.batch_size!r})")
        if self.self_depth is not None and (not isinstance(self.self_depth, int) or self.self_depth < 1):
            raise ConfigError(f"influence.options.lissa.self_depth: must be an integer >= 1 or omitted "
                              f"(got {self.self_depth!r})")
        if not isinstance(self.tol, int | float) or self.tol <= 0:
            raise ConfigError(f"influence.options.lissa.tol: must be a number > 0 (got {self.tol!r})")
        return self


def forward_macs(model: nn.Module, x1: torch.Tensor) -> int:
    """Multiply-adds of one sample's forward pass through the weighted leaf modules (``x1 [1, *input]``):
    ``weight.numel()`` per output position (1 for Linear, H x W for Conv2d). A deterministic stand-in
    for the cost of one per-sample HVP."""
    total = 0

    def count(m: nn.Module, _args: Any, out: Any) -> None:
        nonlocal total
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and isinstance(out, torch.Tensor) and out.dim() >= 2:
            total += w.numel() * (out.numel() // max(out.shape[0] * out.shape[1], 1))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in handles:
            h.remove()
    return total


def sample_cost(model: nn.Module, x1: torch.Tensor) -> int:
    """Cost units of one per-sample HVP: the forward multiply-adds of ``x1 [1, *input]`` (at least the
    parameter count, for models whose layers the count does not see, and ``MIN_SAMPLE_COST``);
    deterministic."""
    return max(forward_macs(model, x1), sum(t.numel() for t in model.parameters()), MIN_SAMPLE_COST)


def auto_depth_batch(depth: int | str, batch: int | str | None, cost_per_sample: int, n: int) -> tuple[int, int]:
    """Resolve ``"auto"`` depth / batch size so that depth x batch x ``cost_per_sample`` stays within
    ``QUERY_WORK_BUDGET`` (explicit values are kept): batch = budget / (1000 x cost) in [32, 256] (at most
    n), then depth = budget / (batch x cost) in [50, 1000]. ``batch = None`` is the full set (n)."""
    samples = QUERY_WORK_BUDGET / max(cost_per_sample, 1)  # sample-HVPs one query may cost
    if batch == "auto":
        want = samples / (AUTO_MAX_DEPTH if depth == "auto" else int(depth))
        batch = int(min(max(want, AUTO_MIN_BATCH), AUTO_MAX_BATCH))
    b = n if batch is None else min(int(batch), n)
    if depth == "auto":
        depth = int(min(max(samples / b, AUTO_MIN_DEPTH), AUTO_MAX_DEPTH))
    return int(depth), b


class LiSSA(InfluenceEstimator):
    """s_t = h_T / scale with h_0 = g_t, h_j = g_t + h_{j-1} - (H_j + lambda I) h_{j-1} / scale.

    H_j is the Hessian on a random mini-batch (fresh each step), so h_T / scale is a truncated,
    stochastic Neumann series for (H + lambda I)^-1 g_t; it converges when 0 < eig(H_j + lambda I)
    < 2 scale, needing depth ~ scale / (lambda_min(H) + lambda) steps. Cost O(depth * repeats *
    batch_size * p) per test batch, memory O(b p). Divergence (the iterate blowing up) raises a
    MethodError with advice; an estimate still moving at the end warns. Use it when even CG's full
    passes over the data are too costly; prefer CG or Arnoldi otherwise (LiSSA is the noisiest).
    """

    name = "lissa"
    capabilities = Capabilities(damping="hessian", exact_spearman=0.99)
    quick_options: ClassVar[dict[str, Any]] = {"depth": 60, "batch_size": None, "self_depth": 60}
    config_class = LiSSAConfig
    summary = "stochastic Neumann series (LiSSA) for the iHVP"

    def fit(self, task: InfluenceTask) -> LiSSA:
        super().fit(task)
        self.lam_ = self.damping_for(task)
        cfg = self.config
        self.cost_ = sample_cost(task.model, task.x_train[:1])
        self.depth_, self.batch_ = auto_depth_batch(cfg.depth, cfg.batch_size, self.cost_, task.n_train)
        if self.config.scale == "auto":
            top = arnoldi_eigs(damped_hvp(task, 0.0), task.space.size, 20, self.config.seed,
                              task.x_train.device)[0].max().item()
            self.scale_ = 2.0 * (top + self.lam_)
        else:
            self.scale_ = float(self.config.scale)
        self.stats_: dict[str, Any] = {"max_relative_change": 0.0, "self_max_relative_change": 0.0}
        return self

    @property
    def self_depth(self) -> int:
        d = self.config.self_depth
        return max(self._require_depth() // 10, 1) if d is None else d

    def _require_depth(self) -> int:
        self._require_fit()
        return self.depth_

    def self_influence_block(self) -> int:
        """Training rows per self-influence call (the store gathers them across chunks)."""
        return self.config.self_block

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._require_fit().gradients(x, y)

    def _run(self, g: torch.Tensor, gen: torch.Generator, depth: int | None = None,
             stat: str = "max_relative_change") -> torch.Tensor:
        """``h_T / scale`` ``[b, p]`` for the rows of ``g`` after ``depth`` steps (default: the resolved depth);
        the convergence check goes to ``stats_[stat]``."""
        task = self._require_fit()
        cfg, n, s = self.config, task.n_train, self.scale_
        depth = self.depth_ if depth is None else depth
        bs = self.batch_
        full = damped_hvp(task, self.lam_) if bs == n else None
        limit = 10.0 * s / max(self.lam_ + task.weight_decay, 1e-12 * s) if self.lam_ + task.weight_decay > 0 else 1e8
        g_norm = g.norm(dim=1).clamp_min(1e-300)
        h = g.clone()
        checkpoint = None
        for j in range(1, depth + 1):
            if full is None:
                idx = torch.randint(0, n, (bs,), generator=gen).to(task.x_train.device)
                matvec = damped_hvp(task, self.lam_, task.x_train[idx], task.y_train[idx], bs)
            else:
                matvec = full
            h = g + h - matvec(h) / s
            growth = (h.norm(dim=1) / g_norm).max().item()
            if not math.isfinite(growth) or growth > limit:
                raise MethodError(
                    f"lissa: the Neumann series diverged at step {j} of {depth} (|h| = {growth:.3g} x |g|): "
                    f"scale={s:.4g} is below the largest eigenvalue of the mini-batch H + lambda I, or H + lambda I "
                    f"is indefinite; raise influence.options.lissa.scale (e.g. to {4 * s:.4g}) or set it to "
                    "\"auto\", raise influence.options.lissa.batch_size, or raise influence.damping")
            if j == depth - max(depth // 10, 1):
                checkpoint = h.clone()
        if checkpoint is not None:
            change = ((h - checkpoint).norm(dim=1) / h.norm(dim=1).clamp_min(1e-300)).max().item()
            self.stats_[stat] = max(self.stats_[stat], change)
            if change > cfg.tol:
                key = "self_depth" if stat.startswith("self") else "depth"
                what = "self-influence " if stat.startswith("self") else ""
                warnings.warn(f"lissa: {what}not converged (estimate still changed by {change:.2g} over the last 10% "
                              f"of {depth} steps); raise influence.options.lissa.{key} (or, if mini-batch noise, "
                              "batch_size / repeats) or influence.damping", stacklevel=3)
        return h / s

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g = gradients64(self._require_fit(), x, y)
        gen = torch.Generator().manual_seed(self.config.seed)  # same mini-batches for every test chunk
        s = sum(self._run(g, gen) for _ in range(self.config.repeats)) / self.config.repeats
        return as_model_dtype(self._require_fit(), s)

    def self_influence(self, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor | None = None) -> torch.Tensor:
        """``g_i . s_i`` ``[b]`` with s_i from ``self_depth`` steps, all b rows in one recursion (the same
        mini-batch sequence as the test side); ``train``: the stored gradients, reused."""
        task = self._require_fit()
        g = gradients64(task, x, y) if train is None else train.to(torch.float64)
        gen = torch.Generator().manual_seed(self.config.seed)
        s = sum(self._run(g, gen, self.self_depth, "self_max_relative_change")
                for _ in range(self.config.repeats)) / self.config.repeats
        return (s * g).sum(dim=1)

    def fit_info(self) -> dict[str, Any]:
        return {"damping": self.lam_, "scale": self.scale_, "depth": self.depth_, "batch_size": self.batch_,
                "self_depth": self.self_depth, "cost_per_sample": self.cost_, **self.stats_}
