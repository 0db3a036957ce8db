"""Conjugate-gradient iHVP: solve (H + lambda I) s = g_test with Hessian-vector products only."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from precompute.errors import ConfigError, MethodError
from precompute.hessian import hessian_cost, objective_hessian
from precompute.influence._common import Matvec, as_model_dtype, damped_hvp, gradients64
from precompute.influence.base import Capabilities, InfluenceEstimator, InfluenceTask, MethodConfig

HESSIAN_MODES = ("auto", "hvp", "explicit")
#: ``hessian = "auto"`` forms H only up to this many parameters (H float64: 134 MB at 4,096)
EXPLICIT_MAX_PARAMS = 4096


@dataclass
class CGConfig(MethodConfig):
    """``tol``: stop when ||r|| <= tol * ||g|| (relative residual) for every column; ``max_iter``: HVP
    passes per test batch at most; ``hvp_batch_size``: training samples per HVP chunk (None = the
    run's); ``block``: block CG over each test batch (shared Krylov space, far fewer steps) instead of
    one independent CG per test point; ``recycle_mb``: block CG keeps the first batch's search
    directions and their HVPs (up to this much memory, 0 = off) and starts each later batch from the
    Galerkin solution in that space, which costs no HVPs; ``self_block``: training samples per
    self-influence solve (its convergence is reported as ``self_iterations`` / ``self_unconverged``);
    ``hessian``: the products ``(H + lambda I) V`` from batched HVPs (``"hvp"``) or from H formed once
    (``"explicit"``, p x p float64; the same H up to rounding); ``"auto"`` forms it when p <=
    ``EXPLICIT_MAX_PARAMS`` and forming costs at most ``n_train / 2`` whole-model HVPs
    (``hessian.hessian_cost``; self-influence alone takes n_train HVPs per iteration): on the bundled
    samples the CNN (611 HVP-equivalents, staged) and logistic regression, not the MLP (1,139)."""

    tol: float = 1e-3
    max_iter: int = 100
    hvp_batch_size: int | None = None
    block: bool = True
    recycle_mb: int = 256
    self_block: int = 512
    hessian: str = "auto"

    def validate(self) -> CGConfig:
        super().validate()
        if self.hessian not in HESSIAN_MODES:
            raise ConfigError(f"influence.options.cg.hessian: must be one of {list(HESSIAN_MODES)} "
                              f"(got {self.hessian!r})")
        if not isinstance(self.tol, int | float) or not 0 < self.tol < 1:
            raise ConfigError(f"influence.options.cg.tol: must be in (0, 1) (got {self.tol!r})")
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ConfigError(f"influence.options.cg.max_iter: must be an integer >= 1 (got {self.max_iter!r})")
        if self.hvp_batch_size is not None and (not isinstance(self.hvp_batch_size, int) or self.hvp_batch_size < 1):
            raise ConfigError("influence.options.cg.hvp_batch_size: must be an integer >= 1 or omitted "
                              f"(got {self.hvp_batch_size!r})")
        if not isinstance(self.block, bool):
            raise ConfigError(f"influence.options.cg.block: must be true or false (got {self.block!r})")
        if not isinstance(self.self_block, int) or self.self_block < 1:
            raise ConfigError(f"influence.options.cg.self_block: must be an integer >= 1 (got {self.self_block!r})")
        if not isinstance(self.recycle_mb, int) or self.recycle_mb < 0:
            raise ConfigError(f"influence.options.cg.recycle_mb: must be an integer >= 0 (got {self.recycle_mb!r})")
        return self


def _explicit(task: InfluenceTask, batch_size: int) -> torch.Tensor:
    """H ``[p, p]`` float64 of the training objective (staged by layer when the model allows)."""
    return objective_hessian(task.model, task.space, task.x_train, task.y_train, task.weight_decay, batch_size,
                             loss_fn=task.loss_fn)


def _indefinite(value: float) -> MethodError:
    return MethodError(f"cg: H + lambda I has non-positive curvature (p^T A p = {value:.3g}); the Hessian is "
                       "indefinite here; raise influence.damping (or use \"auto\")")


def block_cg(matvec: Matvec, b: torch.Tensor, tol: float, max_iter: int,
             start: tuple[torch.Tensor, torch.Tensor] | None = None,
             keep: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Solve ``A X = B`` for all rows of ``b [k, p]`` at once by block CG (Dubrulle 2001, DR-BCG).

    ``start = (x0 [k, p], r0 [k, p])``: an initial guess and its residual ``b - A x0`` (e.g. a
    recycled Galerkin solution); ``keep``: a list that receives ``(S [p, m], A S [p, m])`` of every step.

    The k right-hand sides share one block Krylov space; the residual block is kept as ``Q C`` with
    Q orthonormal (QR each step), which avoids the breakdown of the plain block recurrence when the
    residuals become nearly dependent. Convergence is governed by the spectrum *below* the k-th
    largest eigenvalue, so a block of a few hundred test points converges in a few steps where
    independent CG needs tens. Each step costs one batched HVP of ``min(k, p)`` vectors. Raises
    MethodError if ``S^T A S`` is not positive definite. Returns ``(X [k, p], stats)``.
    """
    B = b.T
    bn = B.norm(dim=0).clamp_min(1e-300)
    x = torch.zeros_like(B) if start is None else start[0].T.clone()
    q, c = torch.linalg.qr(B if start is None else start[1].T)  # R0 = Q C, Q [p, m] orthonormal, m = min(p, k)
    s = q
    rel = c.norm(dim=0) / bn  # ||Q C_j|| = ||C_j||
    iters = 0
    while iters < max_iter and len(rel) and rel.max() > tol:
        iters += 1
        t = matvec(s.T).T  # A S, [p, m]
        if keep is not None:
            keep.append((s, t))
        m = s.T @ t
        chol, info = torch.linalg.cholesky_ex(0.5 * (m + m.T))
        if info:
            raise _indefinite(float(torch.linalg.eigvalsh(0.5 * (m + m.T)).min()))
        xi = torch.cholesky_inverse(chol)
        x += s @ (xi @ c)
        q, zeta = torch.linalg.qr(q - t @ xi)
        s = q + s @ zeta.T
        c = zeta @ c
        rel = c.norm(dim=0) / bn
    worst = float(rel.max()) if len(rel) else 0.0
    return x.T, {"iterations": iters, "max_relative_residual": worst, "unconverged": int((rel > tol).sum())}


def batched_cg(matvec: Matvec, b: torch.Tensor, tol: float, max_iter: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Solve ``A X = B`` column by column (rows of ``b [k, p]``), all columns in one HVP pass per step.

    Columns that reached ``||r|| <= tol ||b||`` drop out of the HVP batch. Raises MethodError on
    non-positive curvature (A not positive definite). Returns ``(X [k, p], stats)``.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(1)
    target = tol * b.norm(dim=1)
    active = torch.nonzero(rs.sqrt() > target).flatten()
    iters = 0
    while active.numel() and iters < max_iter:
        iters += 1
        pa = p[active]
        ap = matvec(pa)
        curv = (pa * ap).sum(1)
        if (curv <= 0).any():
            raise _indefinite(curv.min().item())
        alpha = rs[active] / curv
        x[active] += alpha[:, None] * pa
        r[active] -= alpha[:, None] * ap
        rs_new = (r[active] ** 2).sum(1)
        beta = rs_new / rs[active]
        rs[active] = rs_new
        p[active] = r[active] + beta[:, None] * pa
        active = active[rs_new.sqrt() > target[active]]
    rel = (rs.sqrt() / b.norm(dim=1).clamp_min(1e-300)).max().item() if len(b) else 0.0
    return x, {"iterations": iters, "max_relative_residual": rel, "unconverged": int(active.numel())}


class ConjugateGradient(InfluenceEstimator):
    """score(t, i) = s_t . g_i with s_t solving (H + lambda I) s_t = g_t by conjugate gradient.

    Each CG step is one batched Hessian-vector product (torch.func jvp-of-grad, vmapped over the test
    batch) over the n training samples: cost O(T b n p) per test batch of b for T steps, memory
    O(b p), no p x p matrix. By default the b test points are solved as one block (block CG): T then
    depends on the spectrum below the b-th eigenvalue, a few steps on the digits CNN against ~40
    for independent CG (``block = false``; T ~ sqrt(condition number)). Larger damping converges
    faster. On small models whose H is cheap to form (``hessian = "auto"``: the digits CNN, staged by
    layer 12x faster than p HVPs) the products come from H formed once instead: the same iterations, same
    convergence checks. Needs H + lambda I positive definite (raises otherwise). Use it when p is too large for
    the exact Hessian but you want the exact iHVP up to ``tol``; converged CG matches ``exact``.
    """

    name = "cg"
    capabilities = Capabilities(damping="hessian", exact_rtol=1e-5)
    quick_options: ClassVar[dict[str, Any]] = {"tol": 1e-10, "max_iter": 500}  # block CG agrees across batchings to tol
    config_class = CGConfig
    summary = "conjugate gradient on (H + lambda I) s = g_test with Hessian-vector products"

    def fit(self, task: InfluenceTask) -> ConjugateGradient:
        super().fit(task)
        self.lam_ = self.damping_for(task)
        self.hessian_mode_ = self._hessian_mode(task)
        if self.hessian_mode_ == "explicit":
            H = _explicit(task, self.config.hvp_batch_size or task.batch_size)
            lam = self.lam_
            self.matvec_ = lambda v: v @ H + lam * v  # H symmetric: rows V [k, p] -> V H
        else:
            self.matvec_ = damped_hvp(task, self.lam_, batch_size=self.config.hvp_batch_size)
        self.stats_: dict[str, Any] = {"iterations": 0, "max_relative_residual": 0.0, "unconverged": 0,
                                       "recycled_directions": 0}
        self.recycle_: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # W, A W, (W^T A W)^+
        return self

    def _hessian_mode(self, task: InfluenceTask) -> str:
        if self.config.hessian != "auto":
            return self.config.hessian
        p = task.space.size
        small = p <= EXPLICIT_MAX_PARAMS and hessian_cost(task.model, task.space, task.x_train[:1]) <= task.n_train / 2
        return "explicit" if small else "hvp"

    def _recycled_start(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Galerkin solution of ``A X = G`` in the kept directions and its residual; no HVPs."""
        if self.recycle_ is None:
            return None
        w, aw, pinv = self.recycle_
        coef = pinv @ (w.T @ g.T)  # [m, k]
        return (w @ coef).T, g - (aw @ coef).T

    def _recycle_cap(self, p: int) -> int:
        """Directions kept at most: ``recycle_mb`` for W and A W in float64, and never more than p."""
        return min(self.config.recycle_mb * 2**20 // (2 * p * 8), p)

    def _recycle(self, keep: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep this solve's directions and their HVPs, up to ``recycle_mb`` (one pseudo-inverse of
        ``W^T A W``, ``[m, m]``, per fit)."""
        w = torch.cat([s for s, _ in keep], dim=1)
        aw = torch.cat([t for _, t in keep], dim=1)
        cap = self._recycle_cap(w.shape[0])
        w, aw = w[:, :cap], aw[:, :cap]
        if w.shape[1] == 0:
            return
        m = w.T @ aw
        lam, vec = torch.linalg.eigh(0.5 * (m + m.T))
        ok = lam > lam.max() * 1e-12  # a pseudo-inverse: directions repeated across batches are dropped
        self.recycle_ = (w, aw, (vec[:, ok] / lam[ok]) @ vec[:, ok].T)
        self.stats_["recycled_directions"] = int(ok.sum())

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._require_fit().gradients(x, y)

    def _solve(self, g: torch.Tensor, prefix: str = "") -> torch.Tensor:
        """``(H + lambda I)^-1 g`` for the rows of ``g [b, p]`` float64; stats under ``prefix``."""
        if self.config.block:
            recycling = self.recycle_ is None and self._recycle_cap(g.shape[1]) > 0  # the first batch's
            keep: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if recycling else None
            s, stats = block_cg(self.matvec_, g, self.config.tol, self.config.max_iter,
                                start=self._recycled_start(g), keep=keep)
            if keep:
                self._recycle(keep)
        else:
            s, stats = batched_cg(self.matvec_, g, self.config.tol, self.config.max_iter)
        st = self.stats_
        st[f"{prefix}iterations"] = max(st.get(f"{prefix}iterations", 0), stats["iterations"])
        st[f"{prefix}max_relative_residual"] = max(st.get(f"{prefix}max_relative_residual", 0.0),
                                                   stats["max_relative_residual"])
        st[f"{prefix}unconverged"] = st.get(f"{prefix}unconverged", 0) + stats["unconverged"]
        if stats["unconverged"]:
            what = "training points (self-influence)" if prefix else "test points"
            warnings.warn(f"cg: {stats['unconverged']} of {len(g)} {what} did not reach tol={self.config.tol} "
                          f"in max_iter={self.config.max_iter} steps (worst relative residual "
                          f"{stats['max_relative_residual']:.2g}); raise influence.options.cg.max_iter or the damping",
                          stacklevel=3)
        return s

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self._require_fit()
        return as_model_dtype(task, self._solve(gradients64(task, x, y)))

    def self_influence_block(self) -> int:
        """Training rows per self-influence solve (one block CG each; the store gathers them)."""
        return self.config.self_block

    def self_influence(self, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor | None = None) -> torch.Tensor:
        """``g_i . (H + lambda I)^-1 g_i`` ``[b]``: one block solve over the b rows (warm-started from the
        recycled test directions), the stored gradients reused; convergence stats as ``self_*``."""
        task = self._require_fit()
        g = gradients64(task, x, y) if train is None else train.to(torch.float64)
        s = as_model_dtype(task, self._solve(g, "self_"))
        return (s * g.to(s.dtype)).sum(dim=1)

    def fit_info(self) -> dict[str, Any]:
        return {"damping": self.lam_, "hessian": self.hessian_mode_, **self.stats_}
