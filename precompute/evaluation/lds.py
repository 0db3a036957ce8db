"""Linear datamodeling score (LDS; Park et al. 2023, TRAK).

For S random subsets S_s of ``fraction`` of the training set, retrain on each (R seeds) and record
every test point's loss and margin. A method's predicted effect of training on S_s for test point t
is ``sum_{i in S_s} score(t, i)`` (positive = proponent, so a larger sum predicts a *lower* loss);
LDS(t) is the Spearman correlation over subsets between that prediction and the negative retrained
test loss (or the retrained margin), and the reported LDS is its mean over test points, with a
bootstrap interval over test points.

The retrained outputs are the method-independent ground truth: they are stored once per
(model, data, recipe, fraction, repeats, seed) and extended when more subsets are asked for, so
every method, including ones added later, is scored against the same retrained models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cache_format.metrics import spearman_rows
from precompute.evaluation.context import RunContext
from precompute.evaluation.retrain import GRAD_TOL_COARSE, Retrainer, RetrainJob, derive_seed
from precompute.evaluation.settings import LDSSettings
from precompute.evaluation.store import EvaluationStore, settings_key


def subset_masks(n_train: int, fraction: float, seed: int, start: int, stop: int) -> np.ndarray:
    """Subsets ``start..stop-1`` as a ``[stop-start, n_train]`` bool mask; subset s depends on (seed, s)
    only, so a larger S extends a smaller one."""
    size = max(1, int(round(fraction * n_train)))
    out = np.zeros((stop - start, n_train), bool)
    for row, s in enumerate(range(start, stop)):
        rng = np.random.default_rng([seed, s])
        out[row, rng.choice(n_train, size=size, replace=False)] = True
    return out


def bootstrap_mean(values: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean over the finite entries of ``values``."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if n_boot <= 0 or len(v) < 2:
        return mean, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return mean, float(lo), float(hi)


def predicted_effects(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``[n_test, S]``: sum of each test row's scores over each subset."""
    return np.asarray(scores, dtype=np.float64) @ masks.T.astype(np.float64)


def lds(scores: np.ndarray, masks: np.ndarray, target: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """LDS of ``scores [n_test, n_train]`` against ``target [S, n_test]`` (higher = better for the test
    point, i.e. negative loss or margin) for subsets ``masks [S, n_train]``."""
    per_test = spearman_rows(predicted_effects(scores, masks), np.asarray(target, dtype=np.float64).T)
    mean, lo, hi = bootstrap_mean(per_test, n_boot, seed)
    return {"lds": mean, "ci": [lo, hi], "per_test": per_test, "n_test": int(np.isfinite(per_test).sum())}


@dataclass
class LDSGroundTruth:
    """``masks [S, n_train]`` bool, ``test_loss``/``margin`` ``[S, R, n_test]`` float64, ``pred`` int16."""

    key: str
    masks: np.ndarray
    test_loss: np.ndarray
    margin: np.ndarray
    pred: np.ndarray
    retrained: int = 0  # models trained in this call (0 = fully reused)
    mode: str = "warm"

    def first(self, n: int) -> LDSGroundTruth:
        return LDSGroundTruth(self.key, self.masks[:n], self.test_loss[:n], self.margin[:n], self.pred[:n],
                              self.retrained, self.mode)

    def targets(self) -> dict[str, np.ndarray]:
        """``{"loss": -mean_R loss, "margin": mean_R margin}``, each ``[S, n_test]``."""
        return {"loss": -self.test_loss.mean(1), "margin": self.margin.mean(1)}


def groundtruth_key(ctx: RunContext, settings: LDSSettings, mode: str, seed: int) -> str:
    return settings_key({"kind": "lds", "model": ctx.model_fingerprint, "data": ctx.dataset_fingerprint,
                         "recipe": ctx.recipe,
                         "fraction": settings.fraction, "repeats": settings.repeats, "mode": mode, "seed": seed,
                         "tol": GRAD_TOL_COARSE})


def ensure_groundtruth(ctx: RunContext, store: EvaluationStore, retrainer: Retrainer, settings: LDSSettings,
                       seed: int, mode: str, log=print) -> LDSGroundTruth:
    """Load the stored LDS ground truth, retraining only the subsets (and repeats) not yet there."""
    key = groundtruth_key(ctx, settings, mode, seed)
    S, R = settings.subsets, settings.repeats
    found = store.load_groundtruth("lds", key)
    have = 0
    if found is not None:
        _, arr = found
        have = len(arr["masks"])
        if have >= S:
            log(f"[lds] reusing stored ground truth ({have} subsets x {R} seeds; key {key}): no retraining")
            gt = LDSGroundTruth(key, arr["masks"], arr["test_loss"], arr["margin"], arr["pred"], 0, mode)
            return gt.first(S)
    new_masks = subset_masks(ctx.n_train, settings.fraction, seed, have, S)
    jobs = [RetrainJob(keep=np.flatnonzero(m), seed=derive_seed(seed, ctx.cfg.train.seed, have + s, r), mode=mode)
            for s, m in enumerate(new_masks) for r in range(R)]
    log(f"[lds] retraining {len(jobs)} models ({S - have} subsets x {R} seeds, mode {mode}"
        + (f"; {have} subsets reused" if have else "") + ")")
    outs = retrainer.run(jobs, desc="lds retrain")
    shape = (S - have, R, ctx.n_test)
    loss = np.stack([o.test_loss for o in outs]).reshape(shape)
    margin = np.stack([o.margin for o in outs]).reshape(shape)
    pred = np.stack([o.pred for o in outs]).reshape(shape).astype(np.int16)
    gmax = np.array([o.grad_max for o in outs])
    if found is not None:
        _, arr = found
        new_masks = np.concatenate([arr["masks"], new_masks])
        loss = np.concatenate([arr["test_loss"], loss])
        margin = np.concatenate([arr["margin"], margin])
        pred = np.concatenate([arr["pred"], pred])
    meta = {"subsets": S, "repeats": R, "fraction": settings.fraction, "mode": mode, "seed": seed,
            "max_grad_after_retrain": float(np.nanmax(gmax)) if np.isfinite(gmax).any() else None}
    store.save_groundtruth("lds", key, meta, {"masks": new_masks, "test_loss": loss, "margin": margin,
                                              "pred": pred})
    store.prune_groundtruth("lds", key)
    return LDSGroundTruth(key, new_masks, loss, margin, pred, len(jobs), mode)


def evaluate_lds(scores: dict[str, np.ndarray], gt: LDSGroundTruth, settings: LDSSettings,
                 seed: int) -> dict[str, dict[str, Any]]:
    """Per method: LDS (loss) and LDS (margin), each with its bootstrap interval."""
    targets = gt.targets()
    out = {}
    for name, s in scores.items():
        a = lds(s, gt.masks, targets["loss"], settings.bootstrap, seed)
        b = lds(s, gt.masks, targets["margin"], settings.bootstrap, seed)
        out[name] = {"lds": a["lds"], "ci": a["ci"], "lds_margin": b["lds"], "ci_margin": b["ci"],
                     "n_test": a["n_test"], "per_test": np.round(a["per_test"], 4).tolist()}
    return out
