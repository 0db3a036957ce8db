"""Per-training-sample suspicion scores and label suggestions (higher score = more suspicious).

* ``self_influence:<method>``: the run's own self-influence ``score(i, i)`` of each influence method.
* ``oga``: Outlier Gradient Analysis (Chhabra et al., ICML 2025): a scikit-learn outlier detector
  (IsolationForest by default, LocalOutlierFactor optionally) fitted on per-sample gradients of the
  last layer; the suspicion score is the detector's outlier score. No Hessian.
* ``loss``: training loss of the given label under the run's model.
* ``cleanlab``: ``1 - cleanlab.rank.get_label_quality_scores(labels, oof_probs)`` from out-of-fold
  probabilities, plus ``cleanlab.filter.find_label_issues`` as a boolean flag.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

DETECTORS = ("isolation_forest", "lof")


def oga_scores(grads: np.ndarray, detector: str = "isolation_forest", seed: int = 0) -> np.ndarray:
    """Outlier score of each row of ``grads [n, p]`` (higher = more of an outlier), float64 ``[n]``."""
    grads = np.asarray(grads, np.float64)
    if detector == "isolation_forest":
        from sklearn.ensemble import IsolationForest

        iso = IsolationForest(n_estimators=200, random_state=seed).fit(grads)
        return -iso.score_samples(grads)
    if detector == "lof":
        from sklearn.neighbors import LocalOutlierFactor

        lof = LocalOutlierFactor(n_neighbors=min(20, len(grads) - 1)).fit(grads)
        return -lof.negative_outlier_factor_
    raise ValueError(f"mislabels.detector: unknown detector {detector!r}; known: {list(DETECTORS)}")


def cleanlab_scores(labels: np.ndarray, oof_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(1 - label quality [n], is_issue [n] bool)`` from cleanlab (confident learning)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = np.asarray(oof_probs, np.float64)
    probs = probs / probs.sum(1, keepdims=True)
    quality = get_label_quality_scores(np.asarray(labels), probs)
    issues = find_label_issues(np.asarray(labels), probs, n_jobs=1)  # a forked pool can deadlock under torch threads
    return 1.0 - np.asarray(quality, np.float64), np.asarray(issues, bool)


def train_topk(grads: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Strongest proponents and opponents of each training sample among the *other* training samples.

    Kernel: ``g_i . g_j`` of last-layer loss gradients at the given labels (TracIn at the final
    model, up to the learning rate): positive = a step on j lowers i's loss. Computed in row chunks
    of ``chunk`` (never an n x n matrix). Returns ``(pro_ids, pro_scores, opp_ids, opp_scores)``,
    each ``[n, k]``, best first.
    """
    from precompute.cache.scores import topk_sorted

    g = np.asarray(grads, np.float32)
    n = len(g)
    k = min(k, n - 1)
    out = [np.zeros((n, k), np.int32), np.zeros((n, k), np.float32), np.zeros((n, k), np.int32),
           np.zeros((n, k), np.float32)]
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        block = g[s:e] @ g.T
        rows = np.arange(e - s)
        block[rows, rows + s] = -np.inf
        out[0][s:e], out[1][s:e] = topk_sorted(block, k, 1, True)
        block[rows, rows + s] = np.inf
        out[2][s:e], out[3][s:e] = topk_sorted(block, k, 1, False)
    return out[0], out[1], out[2], out[3]


def cosine_neighbours(features: np.ndarray, k: int, chunk: int = 1024
                      ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Per row chunk ``(start, stop, sim [rows, n], idx [rows, k'])``: feature-cosine similarities and
    the ``k' = min(k, n - 1)`` most similar *other* samples (unsorted); never an ``n x n`` matrix."""
    f = np.asarray(features, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    n = len(f)
    k = min(k, n - 1)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        sim = f[s:e] @ f.T
        sim[np.arange(e - s), np.arange(s, e)] = -np.inf
        yield s, e, sim, np.argpartition(-sim, k - 1, axis=1)[:, :k]


def neighbour_vote(features: np.ndarray, labels: np.ndarray, n_classes: int, k: int = 10,
                   chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Label vote of each sample's ``k`` most similar other training samples (feature cosine).

    This is the label-free part of the last-layer influence kernel
    ``g_i . g_j = (r_i . r_j)(h_i . h_j + 1)``: the residual factor ``r`` depends on the label under
    suspicion (a vote weighted by it just echoes the given label), ``h_i . h_j`` does not.
    Returns ``(label [n], agreement [n])``: the similarity-weighted majority label and its vote share.
    """
    labels = np.asarray(labels)
    n = len(labels)
    label = np.zeros(n, np.int64)
    share = np.zeros(n, np.float32)
    for s, e, sim, idx in cosine_neighbours(features, k, chunk):
        k = idx.shape[1]
        w = np.maximum(np.take_along_axis(sim, idx, 1), 0.0) + 1e-9
        votes = np.zeros((e - s, n_classes))
        np.add.at(votes, (np.repeat(np.arange(e - s), k), labels[idx].ravel()), w.ravel())
        label[s:e] = votes.argmax(1)
        share[s:e] = votes.max(1) / votes.sum(1)
    return label, share


def suggested_labels(given: np.ndarray, pred: np.ndarray, vote: np.ndarray) -> np.ndarray:
    """The model's prediction; where the model agrees with the given label (possibly by memorising
    it), the neighbours' vote instead."""
    given, pred, vote = (np.asarray(a, np.int64) for a in (given, pred, vote))
    return np.where(pred != given, pred, vote)
