"""Training-dynamics and influence signals for suspected mislabels (numpy; higher = more suspicious).

All of them use the classifier head (the last ``nn.Linear``): for cross-entropy its per-sample loss
gradient at a checkpoint is ``g_i = r_i ⊗ [h_i, 1]`` with ``r_i = p_i - e_{y_i}`` (residual of the
*given* label, ``[C]``) and ``h_i`` the penultimate features ``[d]`` (the ``1`` only with a bias), so
every kernel below is exact for the head without forming a gradient. See docs/mislabels.md for what
each one measured.

* :func:`tracin_self_influence`: TracIn self-influence ``sum_k lr_k ||g_i(theta_k)||^2`` over the
  training checkpoints (Pruthi et al. 2020, TracInCP, head only).
* :func:`class_influence`: mean influence ``g_t . g_i`` of training sample i on the (clean) test
  points of each class, ``[n, C]``; a mislabelled sample hurts the test points of its true class.
* :func:`knn_disagreement`: share of the k most similar training samples (penultimate-feature
  cosine, the label-free factor of the head's influence kernel) whose label differs from i's.
* :func:`area_under_margin`: mean over checkpoints of (largest other logit - given logit) (AUM,
  Pleiss et al. 2020), a training-dynamics baseline.
* :func:`rank_ensemble`: the mean of the signals' ranks (each rescaled to (0, 1]): calibrated by rank,
  so no signal's scale dominates.
"""

from __future__ import annotations

import numpy as np

from cache_format.metrics import rank_rows
from precompute.mislabels.ranking import cosine_neighbours


def residuals(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``r = p - e_y`` ``[n, C]`` float64: the head's output gradient of cross-entropy at label ``y``."""
    r = np.array(probs, np.float64)
    r[np.arange(len(r)), np.asarray(labels, np.int64)] -= 1.0
    return r


def _with_bias(h: np.ndarray, bias: bool) -> np.ndarray:
    h = np.asarray(h, np.float64)
    return np.concatenate([h, np.ones((len(h), 1))], 1) if bias else h


def head_gradient_sq_norm(probs: np.ndarray, features: np.ndarray, labels: np.ndarray,
                          bias: bool = True) -> np.ndarray:
    """``||g_i||^2 = ||r_i||^2 (||h_i||^2 + bias)`` ``[n]``: the head's per-sample gradient norm squared."""
    r = residuals(probs, labels)
    return (r * r).sum(1) * (_with_bias(features, bias) ** 2).sum(1)


def tracin_self_influence(snapshots: list[tuple[float, np.ndarray, np.ndarray]], labels: np.ndarray,
                          bias: bool = True) -> np.ndarray:
    """``sum_k lr_k ||g_i(theta_k)||^2`` ``[n]`` over ``snapshots`` of ``(lr_k, probs [n, C], features [n, d])``."""
    out = np.zeros(len(labels), np.float64)
    for lr, probs, feats in snapshots:
        out += float(lr) * head_gradient_sq_norm(probs, feats, labels, bias)
    return out


def class_influence(probs: np.ndarray, features: np.ndarray, labels: np.ndarray, test_probs: np.ndarray,
                    test_features: np.ndarray, test_labels: np.ndarray, n_classes: int,
                    bias: bool = True) -> np.ndarray:
    """``[n, C]``: mean over test points t of class c of ``g_t . g_i`` (head gradients at one checkpoint;
    positive = training on i lowers those test losses). Exact and without an ``[n, n_test]`` matrix:
    ``mean_t (r_i . r_t)(hb_i . hb_t) = r_i^T M_c hb_i`` with ``M_c = mean_{t in c} r_t hb_t^T``.
    A class without test points gets 0."""
    r, hb = residuals(probs, labels), _with_bias(features, bias)
    rt, hbt = residuals(test_probs, test_labels), _with_bias(test_features, bias)
    yt = np.asarray(test_labels, np.int64)
    out = np.zeros((len(r), n_classes), np.float64)
    for c in range(n_classes):
        sel = yt == c
        if sel.any():
            m = rt[sel].T @ hbt[sel] / sel.sum()  # [C, d + 1]
            out[:, c] = np.einsum("ia,ab,ib->i", r, m, hb)
    return out


def class_influence_suspicion(influence: np.ndarray) -> np.ndarray:
    """``-min_c influence[i, c]`` ``[n]``: how much sample i hurts the test points of the class it hurts most."""
    return -np.asarray(influence, np.float64).min(1)


def knn_disagreement(features: np.ndarray, labels: np.ndarray, k: int = 20, chunk: int = 1024) -> np.ndarray:
    """Share ``[n]`` of the ``k`` most similar *other* samples (feature cosine) whose label differs from
    the sample's own; computed in row chunks (never an ``n x n`` matrix)."""
    labels = np.asarray(labels)
    out = np.zeros(len(labels), np.float64)
    for s, e, _sim, idx in cosine_neighbours(features, k, chunk):
        out[s:e] = (labels[idx] != labels[s:e, None]).mean(1)
    return out


def margin(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``max_{j != y} z_j - z_y`` ``[n]`` (positive: the model prefers another class)."""
    z = np.array(logits, np.float64)
    idx = np.arange(len(z)), np.asarray(labels, np.int64)
    given = z[idx].copy()
    z[idx] = -np.inf
    return z.max(1) - given


def area_under_margin(logits_per_checkpoint: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Mean margin over checkpoints ``[n]`` (the negative of Pleiss et al.'s AUM: higher = more suspicious)."""
    return np.mean([margin(z, labels) for z in logits_per_checkpoint], axis=0)


def rank_ensemble(signals: list[np.ndarray]) -> np.ndarray:
    """Mean of the signals' average ranks divided by n ``[n]`` (ties share their rank), in (0, 1]."""
    ranks = rank_rows(np.stack([np.asarray(s, np.float64) for s in signals]))
    return ranks.mean(0) / ranks.shape[1]
