"""The ``mislabels`` stage of the precompute pipeline: rank, suggest, evaluate, store."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from cache_format import mislabels as fmt
from cache_format import names
from precompute.cache import CacheWriter
from precompute.config import RunConfig
from precompute.data import SplitDataset
from precompute.data.source import as_model_input
from precompute.gradients import per_sample_gradients
from precompute.mislabels.oof import out_of_fold_probs
from precompute.mislabels.ranking import (
    cleanlab_scores,
    neighbour_vote,
    oga_scores,
    suggested_labels,
    train_topk,
)
from precompute.params import ParamSpace, select_parameters


def _save_npy(writer: CacheWriter, rel: str, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    np.save(writer.path(rel), arr)
    writer.arrays[rel] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}


def run_mislabel_stage(cfg: RunConfig, ds: SplitDataset, model: torch.nn.Module, outputs: dict[str, Any],
                       self_influence: dict[str, np.ndarray], writer: CacheWriter, device: torch.device,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """Compute every ranking, the suggested labels and the detection report; write them via ``writer``.

    ``outputs`` is the pipeline's predictions dict (train loss/pred/features); ``self_influence``
    maps influence method -> ``[n_train]`` self-influence. Returns the manifest's ``mislabels`` entry.
    """
    mc = cfg.mislabels
    n, n_classes = ds.n_train, ds.n_classes
    y = np.asarray(ds.y_train, np.int64)
    timings: dict[str, float] = {}
    scores: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}

    for name, s in self_influence.items():
        s = np.asarray(s, np.float64)
        if np.ptp(s) <= 1e-4 * max(np.abs(s).max(), 1e-30):
            skipped[f"{names.SELF_PREFIX}{name}"] = "self-influence is constant (e.g. cosine of a gradient with itself)"
            continue
        scores[f"{names.SELF_PREFIX}{name}"] = s

    t0 = time.perf_counter()
    space = ParamSpace(model, select_parameters(model, "last_layer"))
    p = next(model.parameters())
    grads = per_sample_gradients(model, as_model_input(ds.x_train, p.dtype, device),  # batched: lazy rows work
                                 torch.as_tensor(y, device=device), space).to("cpu", torch.float64).numpy()
    scores["oga"] = oga_scores(grads, mc.detector, mc.seed)
    timings["oga"] = round(time.perf_counter() - t0, 3)

    scores["loss"] = np.asarray(outputs["train"]["loss"], np.float64)

    table: dict[str, Any] = {"index": np.arange(n, dtype=np.int64), "label": y}
    oof_label = None
    oof_acc = None
    if mc.folds >= 2:
        t0 = time.perf_counter()
        probs, _ = out_of_fold_probs(ds.x_train, y, n_classes, cfg.model, cfg.train, mc.folds, mc.seed, device, log)
        scores["cleanlab"], issues = cleanlab_scores(y, probs)
        timings["cleanlab"] = round(time.perf_counter() - t0, 3)
        _save_npy(writer, names.OOF_PROBS, probs.astype(np.float32))
        oof_label = probs.argmax(1).astype(np.int64)
        oof_acc = float((oof_label == y).mean())
        table["cleanlab_issue"] = issues
    for name, s in scores.items():
        if not np.isfinite(s).all():
            raise FloatingPointError(f"mislabels: ranking {name!r} has non-finite scores")
        table[name] = s

    t0 = time.perf_counter()
    pro, pro_s, opp, opp_s = train_topk(grads, mc.topk)
    for rel, arr in ((names.PROPONENTS, pro), (names.PROPONENT_SCORES, pro_s), (names.OPPONENTS, opp),
                     (names.OPPONENT_SCORES, opp_s)):
        _save_npy(writer, rel, arr)
    vote, share = neighbour_vote(outputs["arrays"]["train_features"], y, n_classes, mc.topk)
    pred = np.asarray(outputs["train"]["pred"], np.int64)
    table["pred_label"] = pred
    if oof_label is not None:
        table["oof_label"] = oof_label
        table["oof_confidence"] = probs.max(1).astype(np.float32)
    table["proponent_label"] = vote
    table["proponent_agreement"] = share
    table["suggested_label"] = suggested_labels(y, pred, vote)
    timings["suggestions"] = round(time.perf_counter() - t0, 3)
    writer.path(names.MISLABEL_SCORES)  # creates mislabels/
    writer.save_parquet(names.MISLABEL_SCORES, pd.DataFrame(table))

    methods = list(scores)
    detection = None
    flipped = np.asarray(ds.flipped, bool)
    if cfg.data.label_noise > 0 and 0 < flipped.sum() < n:
        detection = {m: fmt.detection_report(s, flipped) for m, s in scores.items()}
        sugg = table["suggested_label"]
        log(fmt.format_detection_table(detection, int(flipped.sum()), n))
    if detection:
        default = max(detection, key=lambda m: (detection[m]["found@10%"], detection[m]["roc_auc"]))
    else:
        default = "cleanlab" if "cleanlab" in scores else "oga"
    import cleanlab
    import sklearn

    info: dict[str, Any] = {
        "methods": methods,
        "descriptions": {m: fmt.describe_method(m) for m in methods},
        "skipped": skipped,
        "default_method": default,
        "score_direction": "higher = more suspicious",
        "settings": mc.to_dict() if hasattr(mc, "to_dict") else dict(vars(mc)),
        "oga": {"params": space.names, "n_params": space.size, "detector": mc.detector},
        "out_of_fold_accuracy": oof_acc,
        "proponents": {"k": int(pro.shape[1]), "kernel": "last-layer gradient dot product at the given labels"},
        "suggestion": "model prediction; where it equals the given label, the similarity-weighted label vote "
                      "of the k nearest training samples in penultimate-feature space (proponent_label)",
        "n_flipped": int(flipped.sum()),
        "detection": detection,
        "random_baseline": fmt.random_baseline() if detection else None,
        "timings": timings,
        "packages": {"cleanlab": cleanlab.__version__, "scikit-learn": sklearn.__version__},
    }
    if detection:
        info["suggestion_accuracy_on_flipped"] = float(
            (sugg[flipped] == np.asarray(ds.y_train_original)[flipped]).mean())
    return info
