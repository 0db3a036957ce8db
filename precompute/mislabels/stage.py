"""The ``mislabels`` stage of the precompute pipeline: rank, suggest, evaluate, store."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
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
from precompute.mislabels.dynamics import checkpoint_rankings
from precompute.mislabels.oga_store import (
    fill_gradient_store,
    oga_scores_from_store,
    train_topk_from_store,
)
from precompute.mislabels.oof import out_of_fold_probs
from precompute.mislabels.ranking import (
    cleanlab_scores,
    neighbour_vote,
    suggested_labels,
)
from precompute.params import ParamSpace, select_parameters

#: the review queue's default ranking and why (from the measurements in docs/mislabels.md)
RANKING_DEFAULT = "ensemble"
RANKING_REASON = ("rank mean of TracIn self-influence, test-class influence and neighbour label disagreement: "
                  "on the digits MLP it found the most flipped labels within the top 20% over symmetric, pair and "
                  "class-conditional noise at 10% and 20% (3 seeds), above the training loss and cleanlab "
                  "(docs/mislabels.md)")


def _save_npy(writer: CacheWriter, rel: str, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    np.save(writer.path(rel), arr)
    writer.arrays[rel] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}


def _head_store(cfg: RunConfig, model: torch.nn.Module, space: ParamSpace, x: Any, y: torch.Tensor, root: Path,
                budget: int | None, log: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """The per-sample head gradients in a chunked store under ``root`` (compressed by the run's factored
    projection when ``[n, p]`` float32 would not fit the memory budget). Returns ``(store, info)``."""
    from precompute.store.budget import resolve_budget
    from precompute.store.compression_choice import compression_config, resolve_kind
    from precompute.store.gradient_store import chunk_rows_for

    budget = budget or resolve_budget(cfg.memory_budget)
    kind, why = resolve_kind(cfg, len(y), space.size, budget)
    comp = None
    if kind != "none":
        from precompute.compression import GradientCompressor

        comp = GradientCompressor.create(compression_config(cfg.influence.compression, kind), model, space, x[:2])
        log(f"[mislabels] head gradients compressed ({kind}) to k = {comp.dim:,} of p = {space.size:,} ({why})")
    width = comp.dim if comp is not None else space.size
    rows = cfg.chunk_rows or chunk_rows_for(width, "float32", max(budget // 8, 1 << 20), len(y))
    from precompute.store.stage import model_fingerprint

    fp = f"head:{model_fingerprint(model)}:{comp.fingerprint() if comp is not None else 'exact'}"
    store = fill_gradient_store(model, x, y, space, root, rows, comp, batch_size=cfg.influence.train_batch_size,
                                fingerprint=fp)
    return store, {"compression": kind, "width": int(width), "chunk_rows": int(rows), "chunks": store.spec.n_chunks}


def run_mislabel_stage(cfg: RunConfig, ds: SplitDataset, model: torch.nn.Module, outputs: dict[str, Any],
                       self_influence: dict[str, np.ndarray], writer: CacheWriter, device: torch.device,
                       log: Callable[[str], None] = print, checkpoints: list[Any] | None = None,
                       work_root: str | Path | None = None, budget: int | None = None) -> dict[str, Any]:
    """Compute every ranking, the suggested labels and the detection report; write them via ``writer``.

    ``outputs`` is the pipeline's predictions dict (train loss/pred/features); ``self_influence``
    maps influence method -> ``[n_train]`` self-influence; ``checkpoints``: the training snapshots
    (``.lr``, ``.state_dict``) for the checkpoint rankings; ``work_root``: a folder for the head
    gradient store (default: a temporary folder). Returns the manifest's ``mislabels`` entry.
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
    p = next(model.parameters())
    x_tr, y_tr = as_model_input(ds.x_train, p.dtype, device), torch.as_tensor(y, device=device)
    dyn, dyn_info = checkpoint_rankings(model, checkpoints, x_tr, y, as_model_input(ds.x_test, p.dtype, device),
                                        np.asarray(ds.y_test, np.int64), n_classes)
    scores.update(dyn)
    timings["checkpoint_rankings"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    space = ParamSpace(model, select_parameters(model, "last_layer"))
    tmp = None
    if work_root is None:
        tmp = tempfile.TemporaryDirectory(prefix="mislabels-")
        work_root = tmp.name
    store, store_info = _head_store(cfg, model, space, x_tr, y_tr, Path(work_root) / "mislabels-head", budget, log)
    scores["oga"] = oga_scores_from_store(store, mc.detector, mc.seed)
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
    pro, pro_s, opp, opp_s = train_topk_from_store(store, mc.topk)
    if tmp is not None:
        tmp.cleanup()
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
    best = max(detection, key=lambda m: (detection[m]["found@20%"], detection[m]["roc_auc"])) if detection else None
    default = RANKING_DEFAULT if RANKING_DEFAULT in scores else ("cleanlab" if "cleanlab" in scores else "oga")
    reason = RANKING_REASON if default == RANKING_DEFAULT else "the measured default could not be computed"
    import cleanlab
    import sklearn

    info: dict[str, Any] = {
        "methods": methods,
        "descriptions": {m: fmt.describe_method(m) for m in methods},
        "skipped": skipped,
        "default_method": default,
        "ranking_default": default,
        "ranking_reason": reason,
        "best_on_injected_noise": best,
        "checkpoint_rankings": dyn_info,
        "score_direction": "higher = more suspicious",
        "settings": mc.to_dict() if hasattr(mc, "to_dict") else dict(vars(mc)),
        "oga": {"params": space.names, "n_params": space.size, "detector": mc.detector, "store": store_info},
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
