"""Leave-one-out: retrain without single training points and compare with the predicted change.

Removing training point i changes test point t's loss by about ``+score(t, i) / n_train`` (positive
score = proponent: removing it raises the loss). For a convex model each retrain warm-starts from the
trained model and converges in float64 (the reference full model is re-converged the same way, so
both sides share the same precision). For non-convex models the recipe is rerun with the run's seed;
the differences are then dominated by training noise and the result is flagged as not meaningful.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import pearsonr

from cache_format.metrics import pearson_rows, spearman, spearman_rows
from precompute.evaluation.context import RunContext
from precompute.evaluation.retrain import GRAD_TOL, Retrainer, RetrainJob, keep_without
from precompute.evaluation.settings import LOOSettings
from precompute.evaluation.store import EvaluationStore, settings_key


def loo_points(n_train: int, n_points: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 7919])
    return np.sort(rng.choice(n_train, size=min(n_points, n_train), replace=False))


def ensure_groundtruth(ctx: RunContext, store: EvaluationStore, retrainer: Retrainer, settings: LOOSettings,
                       seed: int, mode: str, log=print) -> tuple[str, dict[str, np.ndarray]]:
    """(key, ``{"train_index": [m], "delta_loss": [m, n_test]}``): retrained minus reference test loss."""
    key = settings_key({"kind": "loo", "model": ctx.model_fingerprint, "data": ctx.dataset_fingerprint,
                        "recipe": ctx.recipe,
                        "points": settings.points, "mode": mode, "seed": seed, "tol": GRAD_TOL})
    found = store.load_groundtruth("loo", key)
    if found is not None:
        log(f"[loo] reusing stored ground truth ({len(found[1]['train_index'])} points; key {key}): no retraining")
        return key, found[1]
    idx = loo_points(ctx.n_train, settings.points, seed)
    run_seed = ctx.cfg.train.seed
    jobs = [RetrainJob(keep=None, seed=run_seed, mode=mode, tol=GRAD_TOL)]
    jobs += [RetrainJob(keep=keep_without(ctx.n_train, [i]), seed=run_seed, mode=mode, tol=GRAD_TOL) for i in idx]
    log(f"[loo] retraining {len(jobs)} models (reference + {len(idx)} left out, mode {mode})")
    outs = retrainer.run(jobs, desc="loo retrain")
    ref = outs[0].test_loss
    delta = np.stack([o.test_loss - ref for o in outs[1:]])
    gmax = np.array([o.grad_max for o in outs])
    arrays = {"train_index": idx, "delta_loss": delta}
    meta = {"points": len(idx), "mode": mode, "seed": seed,
            "max_grad_after_retrain": float(np.nanmax(gmax)) if np.isfinite(gmax).any() else None}
    store.save_groundtruth("loo", key, meta, arrays)
    store.prune_groundtruth("loo", key)
    return key, arrays


def evaluate_loo(scores: dict[str, np.ndarray], gt: dict[str, np.ndarray], n_train: int) -> dict[str, dict[str, Any]]:
    """Per method: mean over test points of Pearson/Spearman across the left-out points (``pearson``,
    ``spearman``), and the same pooled over all (test, left-out) pairs (``*_pooled``)."""
    idx = gt["train_index"]
    actual = gt["delta_loss"].T  # [n_test, m]
    out = {}
    for name, s in scores.items():
        pred = np.asarray(s, dtype=np.float64)[:, idx] / n_train  # [n_test, m]
        p_rows, s_rows = pearson_rows(pred, actual), spearman_rows(pred, actual)
        out[name] = {
            "pearson": float(np.nanmean(p_rows)), "spearman": float(np.nanmean(s_rows)),
            "pearson_pooled": float(pearsonr(pred.ravel(), actual.ravel())[0]),
            "spearman_pooled": spearman(pred.ravel(), actual.ravel()),
            "slope": float(np.polyfit(pred.ravel(), actual.ravel(), 1)[0]),
        }
    return out
