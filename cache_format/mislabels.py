"""Suspected-mislabel rankings in a run's cache: the on-disk names, detection metrics and a reader.

Torch-free (numpy, pandas, scikit-learn metrics only): precompute imports the metric functions from
here, so what precompute stores and what the review page recomputes live can never disagree.

Layout (written by :mod:`precompute.mislabels`)::

    <run>/mislabels/scores.parquet     one row per training sample: index, label, one suspicion
                                       column per ranking method (higher = more suspicious),
                                       cleanlab_issue, pred_label, oof_label, oof_confidence,
                                       proponent_label, proponent_agreement, suggested_label
    <run>/mislabels/oof_probs.npy      float32 [n_train, n_classes] out-of-fold probabilities
    <run>/mislabels/proponents.npy     int32 [n_train, k] strongest proponents among other training
    <run>/mislabels/proponent_scores.npy      samples (last-layer gradient dot product, best first)
    <run>/mislabels/opponents.npy      int32 [n_train, k] strongest opponents (most negative first)
    <run>/mislabels/opponent_scores.npy
    manifest.json: "mislabels"         methods, descriptions, default_method (= ranking_default) and
                                       ranking_reason, settings, timings and (when the run injected
                                       label noise) ROC-AUC and found@5/10/20/30% per method
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cache_format.names import (
    EMBEDDING,
    MISLABEL_SCORES,
    MISLABELS_KEY,
    OPPONENT_SCORES,
    OPPONENTS,
    PROPONENT_SCORES,
    PROPONENTS,
    SELF_PREFIX,
)
from cache_format.runs import CacheProblem, RunCache, build_command

#: fractions of the training set inspected at which detection is reported
FOUND_AT = (0.05, 0.10, 0.20, 0.30)
#: columns of scores.parquet that are not ranking methods
NON_METHOD_COLUMNS = ("index", "label", "cleanlab_issue", "pred_label", "oof_label", "oof_confidence",
                      "proponent_label", "proponent_agreement", "suggested_label")


# ----------------------------------------------------------------------------------------- metrics
def ranking_order(scores: np.ndarray) -> np.ndarray:
    """Training indices, most suspicious first (ties broken by index, so the order is deterministic)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.lexsort((np.arange(len(scores)), -scores))


def detection_curve(scores: np.ndarray, flipped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of the training set inspected (in ranking order) vs fraction of flipped labels found.

    Both arrays have ``n + 1`` points and start at (0, 0). ``flipped`` is the ground truth.
    """
    flipped = np.asarray(flipped, bool)
    n, n_flip = len(flipped), int(flipped.sum())
    found = np.concatenate([[0], np.cumsum(flipped[ranking_order(scores)])])
    x = np.arange(n + 1) / max(n, 1)
    return x, found / max(n_flip, 1)


def found_at(scores: np.ndarray, flipped: np.ndarray, fractions=FOUND_AT) -> dict[str, float]:
    """Fraction of flipped labels among the top ``ceil(f * n)`` ranked samples, for each ``f``."""
    flipped = np.asarray(flipped, bool)
    n, n_flip = len(flipped), int(flipped.sum())
    ranked = flipped[ranking_order(scores)]
    return {f"found@{round(f * 100)}%": float(ranked[:int(np.ceil(f * n))].sum() / max(n_flip, 1))
            for f in fractions}


def roc_auc(scores: np.ndarray, flipped: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` separating flipped from clean labels (0.5 = random)."""
    from sklearn.metrics import roc_auc_score

    flipped = np.asarray(flipped, bool)
    if flipped.all() or not flipped.any():
        return float("nan")
    return float(roc_auc_score(flipped, np.asarray(scores, np.float64)))


def random_baseline(fractions=FOUND_AT) -> dict[str, float]:
    """Expected detection when inspecting in random order: found@f = f, ROC-AUC = 0.5."""
    return {"roc_auc": 0.5, **{f"found@{round(f * 100)}%": float(f) for f in fractions}}


def detection_report(scores: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    """``{"roc_auc": ..., "found@5%": ..., ...}`` for one ranking method."""
    return {"roc_auc": roc_auc(scores, flipped), **found_at(scores, flipped)}


def format_detection_table(detection: dict[str, dict[str, float]], n_flipped: int | None = None,
                           n_train: int | None = None) -> str:
    """A fixed-width text table of detection results (methods sorted by found@10%, then ROC-AUC)."""
    cols = ["roc_auc"] + [f"found@{round(f * 100)}%" for f in FOUND_AT]
    rows = sorted(detection.items(), key=lambda kv: (-kv[1].get("found@10%", 0), -kv[1].get("roc_auc", 0)))
    rows.append(("random", random_baseline()))
    width = max(len("method"), *(len(m) for m, _ in rows))
    lines = []
    if n_flipped is not None and n_train is not None:
        lines.append(f"{n_flipped} flipped labels among {n_train} training samples")
    lines.append(f"{'method':<{width}}  " + "  ".join(f"{c:>9}" for c in cols))
    for m, d in rows:
        lines.append(f"{m:<{width}}  " + "  ".join(f"{d.get(c, float('nan')):>9.3f}" for c in cols))
    return "\n".join(lines)


def describe_method(method: str) -> str:
    """One line saying what a ranking method's score measures."""
    if method.startswith(SELF_PREFIX):
        return (f"self-influence of {method[len(SELF_PREFIX):]}: how much the sample supports its own label; "
                "samples the model can only fit by memorising them score high")
    return {
        "oga": "Outlier Gradient Analysis: outlier score of the sample's last-layer loss gradient "
               "(scikit-learn outlier detector)",
        "loss": "training loss of the given label under the run's model",
        "cleanlab": "confident learning (cleanlab): 1 - label quality of the given label under "
                    "out-of-fold predicted probabilities",
        "ensemble": "mean rank of tracin_self, class_influence and neighbour_disagreement (rank-calibrated "
                    "ensemble)",
        "tracin_self": "TracIn self-influence of the classifier head, summed over the training checkpoints: "
                       "samples whose loss gradient stays large while training are fought by the rest",
        "class_influence": "how much the sample hurts the (clean) test points of the class it hurts most "
                           "(head-gradient influence at an early checkpoint)",
        "neighbour_disagreement": "share of the 20 most similar training samples (penultimate features at an "
                                  "early checkpoint) whose label differs from the sample's",
        "margin": "area under the margin: how far another class's logit is above the given label's, "
                  "averaged over the training checkpoints",
    }.get(method, method)


# ------------------------------------------------------------------------------------------ reader
@dataclass
class MislabelData:
    """The mislabel section of one run, loaded for the review page."""

    run: RunCache

    @property
    def path(self) -> Path:
        return self.run.path

    @cached_property
    def info(self) -> dict[str, Any]:
        info = self.run.manifest.get(MISLABELS_KEY)
        if not info:
            raise CacheProblem("incomplete", self.path, f"run {self.run.name} has no mislabel rankings. Rebuild it "
                               f"with mislabels enabled: {build_command(self.run.name)} --overwrite")
        return info

    @cached_property
    def table(self) -> pd.DataFrame:
        """scores.parquet indexed by training index."""
        return pd.read_parquet(self.run.require_file(MISLABEL_SCORES)).set_index("index", drop=False)

    @property
    def methods(self) -> list[str]:
        return list(self.info["methods"])

    @property
    def default_method(self) -> str:
        return self.info.get("default_method") or self.methods[0]

    @property
    def ranking_default(self) -> str:
        """The ranking the review queue opens with (``default_method``; same field, clearer name)."""
        return self.default_method

    @property
    def ranking_reason(self) -> str:
        """One sentence saying why :attr:`ranking_default` is the default (runs made before the field
        existed: the rule they were made with)."""
        reason = self.info.get("ranking_reason")
        if isinstance(reason, str) and reason:
            return reason
        if self.detection:
            return "best found@10% on this run's injected label noise (rule of runs made before ranking_reason)"
        return "cleanlab, the default without ground truth (rule of runs made before ranking_reason)"

    @property
    def detection(self) -> dict[str, dict[str, float]] | None:
        return self.info.get("detection")

    @cached_property
    def proponents(self) -> tuple[np.ndarray, np.ndarray]:
        return self.run.load_npy(PROPONENTS), self.run.load_npy(PROPONENT_SCORES)

    @cached_property
    def opponents(self) -> tuple[np.ndarray, np.ndarray]:
        return self.run.load_npy(OPPONENTS), self.run.load_npy(OPPONENT_SCORES)

    def ranking(self, method: str) -> pd.DataFrame:
        """Training samples in ranking order of ``method``: index, score, rank (1 = most suspicious)."""
        if method not in self.table.columns:
            raise KeyError(f"ranking method {method!r} is not in run {self.run.name}; it has {self.methods}")
        scores = self.table[method].to_numpy()
        order = ranking_order(scores)
        return pd.DataFrame({"index": order, "score": scores[order], "rank": np.arange(1, len(order) + 1)})

    def ranks(self, method: str) -> np.ndarray:
        """``rank[i]`` (1-based) of training sample ``i`` under ``method``."""
        order = ranking_order(self.table[method].to_numpy())
        r = np.empty(len(order), np.int64)
        r[order] = np.arange(1, len(order) + 1)
        return r

    def embedding_neighbors(self, i: int, k: int = 6) -> np.ndarray:
        """The ``k`` training samples nearest to training sample ``i`` in the run's 2-D embedding."""
        emb = np.asarray(self.run.array(EMBEDDING)[: self.run.n_train], np.float64)
        d = ((emb - emb[i]) ** 2).sum(1)
        d[i] = np.inf
        return np.argsort(d, kind="stable")[:k]


def load_mislabels(run: RunCache) -> MislabelData:
    """The mislabel section of ``run``; raises :class:`CacheProblem` if the run has none."""
    data = MislabelData(run)
    _ = data.info
    return data
