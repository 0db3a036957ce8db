"""Top-k proponents / opponents toward the *predicted* label, for the misclassified test points only.

"Why did it predict 7?": for a test point the model gets wrong, the usual top-k explain its loss on
the true label; here the query factors are computed with ``y = predicted label``
(``est.query_factors(x_test[rows], y_pred[rows])``) and scored against the method's gradient store,
chunk by chunk, exactly like the main scoring (:func:`precompute.store.scoring.score_against_store`).
A proponent here is a training sample whose up-weighting lowers the loss of the *predicted* label,
i.e. pushes the model further toward its mistake.

Memory is ``O(n_mis k)`` (running top-k per misclassified row, merged tile by tile with the same total
order as :func:`precompute.cache.scores.select_topk`: ties go to the lower training index), never
``n_mis x n_train``. Written into the method's folder (names in :mod:`cache_format.names`)::

    predicted_rows.npy              int32   [n_mis]     test ids, ascending
    predicted_labels.npy            int32   [n_mis]     the label scored toward (the model's prediction)
    predicted_proponents.npy        int32   [n_mis, k]  train ids, highest score first
    predicted_proponent_scores.npy  float32 [n_mis, k]
    predicted_opponents.npy         int32   [n_mis, k]  train ids, most negative first
    predicted_opponent_scores.npy   float32 [n_mis, k]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache_format import names as fmt
from precompute.cache.scores import merge_topk
from precompute.cache.writer import CacheWriter
from precompute.influence.base import InfluenceEstimator
from precompute.store.gradient_store import GradientStore
from precompute.store.scoring import score_against_store


def supports_predicted_label(est: InfluenceEstimator) -> bool:
    """Whether ``est`` can score a test point toward another label: every method whose query side is
    computed from ``(x, y)`` (all gradient methods); not ``needs_evaluation`` ones (datamodels: a
    fitted weight row per test point of the evaluation, whatever its label)."""
    return not est.capabilities.needs_evaluation


class RowTopK:
    """Running top-k proponents and opponents of ``m`` query rows, fed score tiles ``[b, w]``.

    Duck-types :meth:`precompute.cache.ScoreWriter.write_tile`, so ``score_against_store`` can fill it.
    """

    def __init__(self, m: int, n_train: int, k: int):
        self.k, self.n_train = min(k, n_train), n_train
        self.pro = np.full((m, self.k), -1, np.int32)
        self.pro_s = np.full((m, self.k), -np.inf, np.float32)
        self.opp = np.full((m, self.k), -1, np.int32)
        self.opp_s = np.full((m, self.k), np.inf, np.float32)
        self.covered = np.zeros(m, np.int64)

    def write_tile(self, r0: int, c0: int, tile: np.ndarray) -> None:
        """Fold in scores of query rows ``r0:r0+b`` x training columns ``c0:c0+w``."""
        tile = np.asarray(tile, dtype=np.float32)
        r1, c1 = r0 + tile.shape[0], c0 + tile.shape[1]
        if not np.isfinite(tile).all():
            raise FloatingPointError(f"{int((~np.isfinite(tile)).sum())} non-finite predicted-label scores")
        cols = np.broadcast_to(np.arange(c0, c1, dtype=np.int32), tile.shape)
        rs = slice(r0, r1)
        self.pro[rs], self.pro_s[rs] = merge_topk(self.pro[rs], self.pro_s[rs], cols, tile, self.k, True)
        self.opp[rs], self.opp_s[rs] = merge_topk(self.opp[rs], self.opp_s[rs], cols, tile, self.k, False)
        self.covered[r0:r1] += c1 - c0



class _Shifted:
    """``acc`` seen from one block of query rows: its row 0 is ``acc``'s row ``offset``."""

    def __init__(self, acc: RowTopK, offset: int):
        self.acc, self.offset = acc, offset

    def write_tile(self, r0: int, c0: int, tile: np.ndarray) -> None:
        self.acc.write_tile(self.offset + r0, c0, tile)


def predicted_label_topk(est: InfluenceEstimator, store: GradientStore, x_test: Any, rows: np.ndarray,
                         labels: np.ndarray, k: int, test_block: int) -> RowTopK:
    """Top-k toward ``labels [m]`` of test rows ``rows [m]`` (``x_test [n_test, ...]``, a tensor or lazy
    rows), scored against every chunk of ``store``; only ``test_block`` rows are gathered at a time."""
    acc = RowTopK(len(rows), store.spec.n, k)
    for s in range(0, len(rows), max(test_block, 1)):
        idx = np.asarray(rows[s:s + test_block], np.int64)
        xb = x_test[torch.as_tensor(idx)] if isinstance(x_test, torch.Tensor) else x_test[idx]
        yb = torch.as_tensor(np.asarray(labels[s:s + test_block], np.int64), device=xb.device)
        score_against_store(est, store, xb, yb, _Shifted(acc, s), test_block)  # type: ignore[arg-type]
    if not (acc.covered == store.spec.n).all():
        raise RuntimeError("predicted-label scoring: a row was not scored against every training sample once")
    return acc


def misclassified(pred: np.ndarray, y_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, predicted labels)`` of the test points with ``pred != y_test``, rows ascending."""
    pred, y = np.asarray(pred).astype(np.int64), np.asarray(y_test).astype(np.int64)
    rows = np.flatnonzero(pred != y)
    return rows.astype(np.int32), pred[rows].astype(np.int32)


def run_predicted_label(name: str, est: InfluenceEstimator, store: GradientStore, x_test: Any,
                        y_test: torch.Tensor, writer: CacheWriter | None, *, topk: int, test_block: int
                        ) -> dict[str, Any] | None:
    """Score the misclassified test points toward their predicted label and save the six arrays into
    ``methods/<name>/``; the predictions are the run's ``arrays/test_probs.npy`` (already written by
    the predictions stage; argmax, as ``samples.parquet``'s ``pred``). Returns the manifest entry
    (rows, k, seconds) or ``None`` when skipped (a method that does not support it, no predictions)."""
    if writer is None or not supports_predicted_label(est):
        return None
    probs_path = Path(writer.tmp) / fmt.ARRAYS_DIR / f"{fmt.TEST_PROBS}.npy"
    if not probs_path.is_file():
        return None
    clock = time.perf_counter()
    pred = np.load(probs_path, mmap_mode="r").argmax(axis=1)
    rows, labels = misclassified(pred, y_test.detach().cpu().numpy())
    acc = predicted_label_topk(est, store, x_test, rows, labels, topk, test_block)
    for key, arr in ((fmt.PREDICTED_ROWS, rows), (fmt.PREDICTED_LABELS, labels),
                     (fmt.PREDICTED_PROPONENTS, acc.pro), (fmt.PREDICTED_PROPONENT_SCORES, acc.pro_s),
                     (fmt.PREDICTED_OPPONENTS, acc.opp), (fmt.PREDICTED_OPPONENT_SCORES, acc.opp_s)):
        writer.save_array(key, arr, name)
    return {"rows": int(len(rows)), "k": acc.k, "seconds": round(time.perf_counter() - clock, 3)}
