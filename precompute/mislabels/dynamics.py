"""The checkpoint-based rankings of the mislabels stage: one forward pass per training checkpoint.

For every checkpoint the head's inputs (penultimate features) and outputs are computed for the
training and test sets (batched; lazy inputs are read by rows), and the signals of
:mod:`precompute.mislabels.signals` are accumulated, so memory holds ``[n, C]`` and ``[n, d]``
arrays of one or two checkpoints, never gradients.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from precompute.mislabels.signals import (
    area_under_margin,
    class_influence,
    class_influence_suspicion,
    knn_disagreement,
    rank_ensemble,
    tracin_self_influence,
)
from precompute.models import last_linear, predict_with_features

#: the members of the ``ensemble`` ranking (mean of their ranks); chosen in docs/mislabels.md
ENSEMBLE = ("tracin_self", "class_influence", "neighbour_disagreement")
#: neighbours of the disagreement signal
KNN_K = 20


def middle_checkpoint(n_checkpoints: int) -> int:
    """Index of the checkpoint at ~40% of training (the 2nd of 5): fitted, not yet memorised."""
    return max(0, int(round(0.4 * n_checkpoints)) - 1)


def _states(model: torch.nn.Module, checkpoints: list[Any] | None) -> list[tuple[float, dict[str, torch.Tensor]]]:
    if not checkpoints:
        return [(1.0, {k: v.detach().clone() for k, v in model.state_dict().items()})]
    return [(float(ck.lr), ck.state_dict) for ck in checkpoints]


def checkpoint_rankings(model: torch.nn.Module, checkpoints: list[Any] | None, x_train: Any, y_train: np.ndarray,
                        x_test: Any, y_test: np.ndarray, n_classes: int,
                        batch_size: int = 1024) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``({ranking: scores [n_train]}, info)`` for ``tracin_self``, ``class_influence``,
    ``neighbour_disagreement``, ``margin`` and ``ensemble`` (the rank mean of :data:`ENSEMBLE`).

    ``checkpoints``: the run's training snapshots (``.lr``, ``.state_dict``), oldest first; without
    them the model as it is counts as the only one. ``x_*`` ``[n, ...]``: tensors or lazy rows in the
    model's dtype and device.
    """
    states = _states(model, checkpoints)
    mid = middle_checkpoint(len(states))
    work = copy.deepcopy(model).eval()
    bias = last_linear(work)[1].bias is not None
    y_train = np.asarray(y_train, np.int64)
    snapshots, logits = [], []
    scores: dict[str, np.ndarray] = {}
    for k, (lr, state) in enumerate(states):
        work.load_state_dict(state)
        z, h = predict_with_features(work, x_train, batch_size)
        z = z.to("cpu", torch.float64).numpy()
        p, h = np.exp(z - z.max(1, keepdims=True)), h.to("cpu", torch.float64).numpy()
        p /= p.sum(1, keepdims=True)
        snapshots.append((lr, p, h))
        logits.append(z)
        if k == mid:
            zt, ht = predict_with_features(work, x_test, batch_size)
            zt = zt.to("cpu", torch.float64).numpy()
            pt = np.exp(zt - zt.max(1, keepdims=True))
            pt /= pt.sum(1, keepdims=True)
            infl = class_influence(p, h, y_train, pt, ht.to("cpu", torch.float64).numpy(), np.asarray(y_test),
                                   n_classes, bias)
            scores["class_influence"] = class_influence_suspicion(infl)
            scores["neighbour_disagreement"] = knn_disagreement(h, y_train, KNN_K)
    scores["tracin_self"] = tracin_self_influence(snapshots, y_train, bias)
    scores["margin"] = area_under_margin(logits, y_train)
    scores["ensemble"] = rank_ensemble([scores[m] for m in ENSEMBLE])
    info = {"checkpoints": len(states), "middle_checkpoint": mid, "knn_k": KNN_K, "ensemble": list(ENSEMBLE),
            "head_bias": bias}
    return {m: scores[m] for m in ("ensemble", "tracin_self", "class_influence", "neighbour_disagreement",
                                   "margin")}, info
