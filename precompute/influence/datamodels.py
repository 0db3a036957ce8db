"""Linear datamodels (Ilyas et al. 2022; Saunshi et al. 2023, harmonic analysis): per test point, a
linear model of its retrained output on the training subset's indicator vector, fitted to the
retrained subsets that ``influence-explorer evaluate`` caches (the LDS ground truth)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache_format.metrics import spearman_rows
from precompute.errors import ConfigError, InfluenceExplorerError, MethodError
from precompute.influence._rows import RowIndex
from precompute.influence.base import Capabilities, InfluenceEstimator, InfluenceTask, MethodConfig

#: ``alpha = "auto"``: candidate ridge penalties, in units of the mean subset size (diag of X X^T)
ALPHA_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
FISTA_ITERS = 500


def fit_datamodels(masks: np.ndarray, outputs: np.ndarray, alpha: float, l1: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``W [m, n]`` and intercepts ``b [m]`` with ``outputs[s, t] ~ masks[s] . W[t] + b[t]``.

    ``masks [S, n]`` (0/1), ``outputs [S, m]``; ridge penalty ``alpha |W|^2`` (solved in the S x S dual,
    cheap for S << n), plus an L1 penalty ``l1 |W|_1`` by FISTA when ``l1 > 0`` (sparse datamodels).
    """
    x = np.asarray(masks, np.float64)
    y = np.asarray(outputs, np.float64)
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    s = len(x)
    if l1 <= 0:
        w = xc.T @ np.linalg.solve(xc @ xc.T + alpha * np.eye(s), yc)  # [n, m]
    else:  # minimise 1/(2S) |Xc W - Yc|^2 + alpha/(2S) |W|^2 + l1 |W|_1
        lip = (np.linalg.norm(xc, 2) ** 2 + alpha) / s
        w = np.zeros((x.shape[1], y.shape[1]))
        z, t = w.copy(), 1.0
        for _ in range(FISTA_ITERS):
            g = (xc.T @ (xc @ z - yc) + alpha * z) / s
            w_next = z - g / lip
            w_next = np.sign(w_next) * np.maximum(np.abs(w_next) - l1 / lip, 0.0)
            t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
            z = w_next + (t - 1) / t_next * (w_next - w)
            w, t = w_next, t_next
    return w.T, ym - xm @ w


def heldout_fit(masks: np.ndarray, outputs: np.ndarray, alpha: float, l1: float, folds: int,
                seed: int = 0) -> dict[str, float]:
    """K-fold over subsets: mean per-test-point Spearman (a held-out LDS) and R^2 of the predictions."""
    s = len(masks)
    order = np.random.default_rng(seed).permutation(s)
    pred = np.zeros_like(np.asarray(outputs, np.float64))
    for k in range(folds):
        held = order[k::folds]
        keep = np.setdiff1d(order, held)
        w, b = fit_datamodels(masks[keep], outputs[keep], alpha, l1)
        pred[held] = masks[held].astype(np.float64) @ w.T + b
    rho = spearman_rows(pred.T, np.asarray(outputs, np.float64).T)
    resid = ((outputs - pred) ** 2).sum(0)
    total = ((outputs - outputs.mean(0)) ** 2).sum(0)
    r2 = 1 - resid / np.maximum(total, 1e-300)
    return {"heldout_lds": float(np.nanmean(rho)), "heldout_r2": float(np.mean(r2))}


@dataclass
class DatamodelsConfig(MethodConfig):
    """``run``: the folder of a run evaluated with ``influence-explorer evaluate`` (its
    ``evaluation/groundtruth/lds-*`` holds the retrained subsets). ``target``: the retrained output
    modelled, ``"loss"`` (its negative) or ``"margin"``. ``alpha``: ridge penalty (``"auto"``: the best
    held-out fit over a grid); ``l1`` > 0 adds a sparsity penalty; ``folds``: subsets folds for the
    held-out fit. ``damping`` is not used."""

    run: str | None = None
    target: str = "loss"
    alpha: float | str = "auto"
    l1: float = 0.0
    folds: int = 5

    def validate(self) -> DatamodelsConfig:
        super().validate()
        if self.run is not None and (not isinstance(self.run, str) or not self.run):
            raise ConfigError(f"influence.options.datamodels.run: must be a run folder (got {self.run!r})")
        if self.target not in ("loss", "margin"):
            raise ConfigError(f"influence.options.datamodels.target: must be 'loss' or 'margin' (got {self.target!r})")
        if self.alpha != "auto" and (not isinstance(self.alpha, int | float) or isinstance(self.alpha, bool)
                                     or self.alpha <= 0):
            raise ConfigError(f"influence.options.datamodels.alpha: must be a number > 0 or 'auto' (got {self.alpha!r})")
        if not isinstance(self.l1, int | float) or isinstance(self.l1, bool) or self.l1 < 0:
            raise ConfigError(f"influence.options.datamodels.l1: must be a number >= 0 (got {self.l1!r})")
        if not isinstance(self.folds, int) or isinstance(self.folds, bool) or self.folds < 2:
            raise ConfigError(f"influence.options.datamodels.folds: must be an integer >= 2 (got {self.folds!r})")
        return self


def load_lds_groundtruth(run: Path, model_fp: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(masks [S, n_train] bool, test_loss [S, R, n_test], margin [S, R, n_test], meta) of the largest
    LDS ground truth in ``run`` made for the model with fingerprint ``model_fp``."""
    best = None
    for meta_path in sorted((run / "evaluation" / "groundtruth").glob("lds-*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("model_fingerprint") == model_fp and (best is None or meta.get("subsets", 0) > best[1]["subsets"]):
            best = (meta_path.parent, meta)
    if best is None:
        raise MethodError(f"datamodels: {run}/evaluation/groundtruth holds no LDS ground truth for this model; run "
                          f"`influence-explorer evaluate {run}` first (it retrains the subsets datamodels are fitted to)")
    d, meta = best
    try:
        arrays = [np.load(d / f"{name}.npy", allow_pickle=False) for name in ("masks", "test_loss", "margin")]
    except (OSError, ValueError) as exc:
        raise MethodError(f"datamodels: {d} is unreadable ({exc}); rerun `influence-explorer evaluate {run}`") from None
    return arrays[0], arrays[1], arrays[2], meta


class Datamodels(InfluenceEstimator):
    """score(t, i) = W[t, i] of the linear datamodel ``f_t(S) ~ sum_{i in S} W[t, i] + b_t``.

    ``f_t`` is the negative retrained test loss (or the margin) of test point t after training on
    subset S, from the ``evaluate`` cache: ``masks [S, n]`` and outputs ``[S, n_test]`` (averaged over
    retraining seeds); W is a ridge (optionally L1-sparse) regression per test point. Positive =
    proponent: including i raises t's fitted negative loss. The held-out fit (K-fold over subsets:
    Spearman = a held-out LDS, and R^2) is recorded as the fit info. The LDS ``evaluate`` reports for it is
    *in-sample* (the same subsets it was fitted to): compare methods on the held-out figure.

    Cost: the retraining (S models, done by ``evaluate``) dominates; the fit is O(S^2 (n + n_test))
    (dual ridge) and O(n n_test) memory. Scores only the evaluated run's test points, no self-influence
    (zeros). Use it as the reference the other methods approximate: with S >> n it is the best linear
    account of what retraining did, with S ~ 100 a noisy one.
    """

    name = "datamodels"
    config_class = DatamodelsConfig
    capabilities = Capabilities(needs_evaluation=True)
    summary = "linear datamodels fitted to evaluate's retrained subsets (in-sample LDS; held-out fit recorded)"
    quick_options: dict[str, Any] = {"folds": 3}

    def fit(self, task: InfluenceTask) -> Datamodels:
        from precompute.evaluation.context import RunContext  # late: evaluation imports influence
        from precompute.store.stage import model_fingerprint

        if self.config.run is None:
            raise MethodError("datamodels: set influence.options.datamodels.run to the folder of a run evaluated "
                              "with `influence-explorer evaluate` (its retrained subsets are the training data)")
        super().fit(task)
        run = Path(self.config.run)
        try:
            ctx = RunContext.load(run)
        except InfluenceExplorerError as exc:
            raise MethodError(f"datamodels: influence.options.datamodels.run: {exc}") from None
        masks, loss, margin, meta = load_lds_groundtruth(run, ctx.model_fingerprint)
        if masks.shape[1] != task.n_train:
            raise MethodError(f"datamodels: {run} has {masks.shape[1]} training samples, this task {task.n_train}")
        if model_fingerprint(task.model) != ctx.model_fingerprint:
            raise MethodError(f"datamodels: the evaluate cache in {run} was made for another model; evaluate this "
                              "run's own folder")
        outputs = -loss.mean(1) if self.config.target == "loss" else margin.mean(1)  # [S, n_test]
        scale = float(masks.sum(1).mean())
        alphas = [a * scale for a in ALPHA_GRID] if self.config.alpha == "auto" else [float(self.config.alpha)]
        fits = {a: heldout_fit(masks, outputs, a, float(self.config.l1), self.config.folds) for a in alphas}
        self.alpha_ = max(fits, key=lambda a: fits[a]["heldout_lds"])
        self.heldout_ = {**fits[self.alpha_], "subsets": int(len(masks)), "repeats": int(loss.shape[1]),
                         "alpha": self.alpha_, "groundtruth": meta.get("key")}
        w, _ = fit_datamodels(masks, outputs, self.alpha_, float(self.config.l1))
        dtype = next(task.model.parameters()).dtype
        self.weights_ = torch.as_tensor(w, dtype=dtype)  # [n_test, n_train]
        self.tests_ = RowIndex(ctx.x_test.to(task.x_train.dtype), ctx.y_test, f"datamodels (test points of {run})")
        self.trains_ = RowIndex(task.x_train, task.y_train, "datamodels (training samples)")
        return self

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Datamodel weight rows ``[b, n_train]`` of these test points."""
        self._require_fit()
        return self.weights_[self.tests_(x, y)].to(x.device)

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training indices ``[b, 1]`` (the column of W a training sample owns)."""
        self._require_fit()
        return self.trains_(x, y).to(device=x.device, dtype=self.weights_.dtype)[:, None]

    def scores(self, query: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
        return query[:, train[:, 0].round().long()]

    def self_influence(self, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor | None = None) -> torch.Tensor:
        """Zeros ``[b]``: a datamodel predicts test outputs only."""
        return torch.zeros(len(x), dtype=self.weights_.dtype)

    def fit_info(self) -> dict[str, Any]:
        return dict(self.heldout_)
