"""Streaming a score matrix to disk in row blocks, with top-k per row and per column on the fly.

Rows are test points, columns training samples. Each block ``[b, n_train]`` is written to the
memmap and folded into: per-row top-k proponents/opponents, per-column running top-k (the test
points a training sample helps/hurts most) and per-column sums. Blocks can arrive in any order.
"""

from __future__ import annotations

import numpy as np

from cache_format import names as fmt
from precompute.cache.writer import CacheWriter


def topk_sorted(values: np.ndarray, k: int, axis: int = 1, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest (or smallest) entries along ``axis``, best first."""
    k = min(k, values.shape[axis])
    v = values if largest else -values
    part = np.argpartition(-v, k - 1, axis=axis).take(np.arange(k), axis=axis)
    part_vals = np.take_along_axis(v, part, axis=axis)
    order = np.argsort(-part_vals, axis=axis, kind="stable")
    idx = np.take_along_axis(part, order, axis=axis)
    return idx, np.take_along_axis(values, idx, axis=axis)


class ScoreWriter:
    """Receives ``[b, n_train]`` score blocks for one method and writes every derived array."""

    def __init__(self, writer: CacheWriter, method: str, n_test: int, n_train: int, topk: int):
        self.writer, self.method = writer, method
        self.n_test, self.n_train = n_test, n_train
        self.k_row = min(topk, n_train)
        self.k_col = min(topk, n_test)
        self.scores = writer.open_array(fmt.SCORES, (n_test, n_train), np.float32, method)
        self.top_pro = np.zeros((n_test, self.k_row), np.int32)
        self.top_pro_s = np.zeros((n_test, self.k_row), np.float32)
        self.top_opp = np.zeros((n_test, self.k_row), np.int32)
        self.top_opp_s = np.zeros((n_test, self.k_row), np.float32)
        self.col_sum = np.zeros(n_train, np.float64)
        self.helped_idx = np.zeros((0, n_train), np.int64)
        self.helped_val = np.zeros((0, n_train), np.float32)
        self.hurt_idx = np.zeros((0, n_train), np.int64)
        self.hurt_val = np.zeros((0, n_train), np.float32)
        self.rows_done = np.zeros(n_test, bool)

    def write_rows(self, start: int, block: np.ndarray) -> None:
        """Store rows ``start:start+b`` of the score matrix (``block`` is ``[b, n_train]``)."""
        block = np.asarray(block, dtype=np.float32)
        stop = start + len(block)
        if not np.isfinite(block).all():
            bad = int((~np.isfinite(block)).sum())
            raise FloatingPointError(f"{self.method}: {bad} non-finite scores in test rows {start}:{stop}")
        self.scores[start:stop] = block
        self.top_pro[start:stop], self.top_pro_s[start:stop] = topk_sorted(block, self.k_row, 1, True)
        self.top_opp[start:stop], self.top_opp_s[start:stop] = topk_sorted(block, self.k_row, 1, False)
        self.col_sum += block.sum(axis=0, dtype=np.float64)
        rows = np.broadcast_to(np.arange(start, stop)[:, None], block.shape)
        self.helped_idx, self.helped_val = self._merge(self.helped_idx, self.helped_val, rows, block, True)
        self.hurt_idx, self.hurt_val = self._merge(self.hurt_idx, self.hurt_val, rows, block, False)
        self.rows_done[start:stop] = True

    def _merge(self, idx, val, rows, block, largest):
        all_idx = np.concatenate([idx, rows])
        all_val = np.concatenate([val, block])
        sel, best = topk_sorted(all_val, self.k_col, axis=0, largest=largest)
        return np.take_along_axis(all_idx, sel, axis=0), best

    def close(self, self_influence: np.ndarray) -> None:
        """Flush the score memmap and save the derived arrays; every row must have been written."""
        if not self.rows_done.all():
            missing = np.flatnonzero(~self.rows_done)
            raise RuntimeError(f"{self.method}: test rows {missing[:5].tolist()}... were never scored")
        self.scores.flush()
        del self.scores
        w, m = self.writer, self.method
        w.save_array(fmt.TOP_PROPONENTS, self.top_pro, m)
        w.save_array(fmt.TOP_PROPONENT_SCORES, self.top_pro_s, m)
        w.save_array(fmt.TOP_OPPONENTS, self.top_opp, m)
        w.save_array(fmt.TOP_OPPONENT_SCORES, self.top_opp_s, m)
        w.save_array(fmt.SELF_INFLUENCE, np.asarray(self_influence, np.float32), m)
        w.save_array(fmt.TRAIN_NET_INFLUENCE, (self.col_sum / max(self.n_test, 1)).astype(np.float32), m)
        w.save_array(fmt.TRAIN_TOP_HELPED, self.helped_idx.T.astype(np.int32), m)
        w.save_array(fmt.TRAIN_TOP_HELPED_SCORES, self.helped_val.T.astype(np.float32), m)
        w.save_array(fmt.TRAIN_TOP_HURT, self.hurt_idx.T.astype(np.int32), m)
        w.save_array(fmt.TRAIN_TOP_HURT_SCORES, self.hurt_val.T.astype(np.float32), m)
