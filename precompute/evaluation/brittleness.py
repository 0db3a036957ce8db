"""Brittleness / counterfactual removal: does removing a test point's top proponents flip it?

For sampled correctly classified test points, remove the k highest-scoring training samples (each k
of a grid) and retrain; compare how often the prediction flips with removing k random samples
(``random`` tries each). A method whose proponents really support the prediction flips far more
often than random removal. The random baseline is method-independent ground truth and stored once.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from precompute.evaluation.context import RunContext
from precompute.evaluation.retrain import GRAD_TOL_COARSE, Retrainer, RetrainJob, keep_without
from precompute.evaluation.settings import BrittlenessSettings
from precompute.evaluation.store import EvaluationStore, settings_key


def pick_test_points(ctx: RunContext, n: int, seed: int, select: str = "random") -> np.ndarray:
    """``n`` correctly classified test points (all test points if too few are correct), sorted:
    drawn at random, or (``select="low-margin"``) the ones the model is least sure of."""
    correct = np.flatnonzero(ctx.test_pred == ctx.ds.y_test)
    pool = correct if len(correct) >= n else np.arange(ctx.n_test)
    if select == "low-margin":
        import torch

        with torch.no_grad():
            logits = ctx.model()(ctx.x_test[torch.as_tensor(pool)]).to(torch.float64)
        top2 = logits.topk(2, dim=1).values
        return np.sort(pool[np.argsort((top2[:, 0] - top2[:, 1]).numpy(), kind="stable")[:n]])
    rng = np.random.default_rng([seed, 104729])
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))


def top_proponents(scores_row: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-np.asarray(scores_row, dtype=np.float64), kind="stable")[:k]


def random_sets(n_train: int, tests: np.ndarray, ks: list[int], tries: int, seed: int) -> np.ndarray:
    """``[len(tests), len(ks), tries, max(ks)]`` random training indices (first k used for size k)."""
    kmax = max(ks)
    out = np.zeros((len(tests), len(ks), tries, kmax), np.int64)
    for a, t in enumerate(tests):
        for b, k in enumerate(ks):
            for r in range(tries):
                rng = np.random.default_rng([seed, 1299709, int(t), k, r])
                out[a, b, r, :k] = rng.choice(n_train, size=k, replace=False)
    return out


def _key(ctx: RunContext, settings: BrittlenessSettings, mode: str, seed: int) -> str:
    return settings_key({"kind": "cf", "model": ctx.model_fingerprint, "data": ctx.dataset_fingerprint,
                         "recipe": ctx.recipe,
                         "tests": settings.tests, "k": list(settings.k), "random": settings.random,
                         "select": settings.select, "mode": mode, "seed": seed, "tol": GRAD_TOL_COARSE})


def ensure_baseline(ctx: RunContext, store: EvaluationStore, retrainer: Retrainer, settings: BrittlenessSettings,
                    seed: int, mode: str, log=print) -> dict[str, Any]:
    """Reference predictions and the random-removal baseline: ``{"key", "tests", "reference_pred",
    "random_pred" [n_tests, n_k, tries]}``."""
    key = _key(ctx, settings, mode, seed)
    found = store.load_groundtruth("cf", key)
    if found is not None:
        log(f"[brittleness] reusing stored random-removal baseline (key {key})")
        arr = found[1]
        return {"key": key, "tests": arr["tests"], "reference_pred": arr["reference_pred"],
                "random_pred": arr["random_pred"], "random_sets": arr["random_sets"]}
    tests = pick_test_points(ctx, settings.tests, seed, settings.select)
    ks = list(settings.k)
    sets = random_sets(ctx.n_train, tests, ks, settings.random, seed)
    jobs = [RetrainJob(keep=None, seed=ctx.cfg.train.seed, mode=mode)]
    for a in range(len(tests)):
        for b, k in enumerate(ks):
            for r in range(settings.random):
                jobs.append(RetrainJob(keep=keep_without(ctx.n_train, sets[a, b, r, :k]), seed=ctx.cfg.train.seed,
                                       mode=mode))
    log(f"[brittleness] retraining {len(jobs)} models (reference + random removals, mode {mode})")
    outs = retrainer.run(jobs, desc="random removal")
    reference_pred = outs[0].pred[tests]
    random_pred = np.zeros((len(tests), len(ks), settings.random), np.int64)
    j = 1
    for a, t in enumerate(tests):
        for b in range(len(ks)):
            for r in range(settings.random):
                random_pred[a, b, r] = outs[j].pred[t]
                j += 1
    arrays = {"tests": tests, "reference_pred": reference_pred, "random_pred": random_pred, "random_sets": sets}
    store.save_groundtruth("cf", key, {"tests": len(tests), "k": ks, "random": settings.random, "mode": mode},
                           arrays)
    store.prune_groundtruth("cf", key)
    return {"key": key, **arrays}


def removal_sets(scores: np.ndarray, tests: np.ndarray, ks: list[int]) -> np.ndarray:
    """``[n_tests, max(ks)]`` top proponents per sampled test point (first k used for size k)."""
    return np.stack([top_proponents(scores[t], max(ks)) for t in tests])


def sets_hash(sets: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(sets, dtype=np.int64).tobytes()).hexdigest()[:16]


def evaluate_method(ctx: RunContext, retrainer: Retrainer, scores: np.ndarray, baseline: dict[str, Any],
                    settings: BrittlenessSettings, mode: str, name: str = "") -> dict[str, Any]:
    """Retrain without each test point's top-k proponents; flip rates per k and per-test detail."""
    tests, ks = baseline["tests"], list(settings.k)
    sets = removal_sets(scores, tests, ks)
    jobs = [RetrainJob(keep=keep_without(ctx.n_train, sets[a, :k]), seed=ctx.cfg.train.seed, mode=mode)
            for a in range(len(tests)) for k in ks]
    outs = retrainer.run(jobs, desc=f"remove top-k {name}".strip())
    new_pred = np.array([outs[a * len(ks) + b].pred[t] for a, t in enumerate(tests) for b in range(len(ks))])
    new_pred = new_pred.reshape(len(tests), len(ks))
    flipped = new_pred != baseline["reference_pred"][:, None]
    return {"flip_rate": flipped.mean(0).tolist(), "new_pred": new_pred.tolist(), "flipped": flipped.tolist(),
            "removed": sets.tolist(), "sets_hash": sets_hash(sets)}


def baseline_summary(baseline: dict[str, Any], settings: BrittlenessSettings) -> dict[str, Any]:
    ref = baseline["reference_pred"][:, None, None]
    flips = baseline["random_pred"] != ref  # [n_tests, n_k, tries]
    n_tries = flips.shape[2]
    return {"flip_rate": (flips.mean((0, 2)) if n_tries else np.full(len(settings.k), np.nan)).tolist(),
            "flips": flips.sum(2).tolist(), "tries": int(n_tries),
            "new_pred": baseline["random_pred"].tolist()}
