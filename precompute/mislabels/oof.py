"""Out-of-fold predicted probabilities: k-fold retraining of the run's own model and recipe."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from precompute.config import ModelConfig, TrainConfig
from precompute.data.source import as_model_input, subset_rows
from precompute.mislabels.stacked import can_stack, train_stacked
from precompute.models import build_model, count_parameters
from precompute.training import train_model


@contextmanager
def _torch_threads(n: int | None):
    """Temporarily set torch's intra-op threads (small models train fastest on one thread)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fold_assignment(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """``fold[i]`` in ``[0, folds)``: stratified by label when every class has >= ``folds`` samples."""
    from sklearn.model_selection import KFold, StratifiedKFold

    y = np.asarray(y)
    counts = np.bincount(y)
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if counts[counts > 0].min() >= folds
                else KFold(folds, shuffle=True, random_state=seed))
    fold = np.empty(len(y), np.int64)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(y)), y)):
        fold[held] = k
    return fold


def out_of_fold_probs(x: Any, y: np.ndarray, n_classes: int, model_cfg: ModelConfig, train_cfg: TrainConfig,
                      folds: int = 5, seed: int = 0, device: torch.device | str = "cpu",
                      log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``[n, n_classes]`` for every training sample from a model that never saw it.

    Each of ``folds`` models is built with ``build_model(model_cfg)`` and trained with
    ``train_model(train_cfg)`` (the run's own recipe, seeded by ``seed + fold``) on the other folds,
    then predicts its held-out fold; built-in models train all folds at once
    (:func:`precompute.mislabels.stacked.train_stacked`: the same steps up to rounding). Returns
    ``(probs float32, fold [n] int64)``. ``x`` ``[n, ...]``: an array or a lazy source (folds are then
    lazy subsets, read a batch at a time).
    """
    fold = fold_assignment(y, folds, seed)
    dtype = torch.float64 if model_cfg.dtype == "float64" else torch.float32
    xt = as_model_input(x, dtype, device)
    yt = torch.as_tensor(y, device=device)
    probs = np.zeros((len(y), n_classes), np.float32)
    probe = build_model(model_cfg, tuple(x.shape[1:]), n_classes)
    threads = 1 if count_parameters(probe) < 200_000 and torch.device(device).type == "cpu" else None
    train_rows = [torch.as_tensor(np.flatnonzero(fold != k), device=device) for k in range(folds)]
    seeds = [seed * 1000 + train_cfg.seed + k for k in range(folds)]
    stacked = can_stack(probe, train_cfg, xt, [len(r) for r in train_rows])
    with _torch_threads(threads):
        if stacked:  # every fold in one stacked model (the same steps; small models: 4-5x faster)
            models = [build_model(model_cfg, tuple(x.shape[1:]), n_classes).to(device) for _ in range(folds)]
            train_stacked(models, xt, yt, train_rows, train_cfg, seeds)
            if log:
                log(f"  trained the {folds} fold models at once (stacked)")
        for k in range(folds):
            if stacked:
                model = models[k]
            else:  # one model at a time: a user's big model is never held k times
                model = build_model(model_cfg, tuple(x.shape[1:]), n_classes).to(device)
                tr = train_rows[k]
                train_model(model, subset_rows(xt, tr), yt[tr], train_cfg, init_seed=seeds[k])
            te = torch.as_tensor(np.flatnonzero(fold == k), device=device)
            model.eval()
            with torch.no_grad():
                p = torch.cat([torch.softmax(model(xt[te[s:s + 1024]]), 1) for s in range(0, len(te), 1024)])
            probs[te.cpu().numpy()] = p.to(torch.float32).cpu().numpy()
            if log:
                log(f"  fold {k + 1}/{folds}: held-out accuracy {(p.argmax(1) == yt[te]).float().mean().item():.3f}")
    return probs, fold
