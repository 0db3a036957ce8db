"""Streaming a score matrix in tiles, with top-k per row and per column folded in on the fly.

Rows are test points, columns training samples. Each tile ``[b, w]`` (rows ``r0:r0+b``, columns
``c0:c0+w``) is optionally written to the dense memmap and folded into: per-row top-k proponents /
opponents, per-column top-k (the test points a training sample helps / hurts most) and per-column
sums. Tiles can arrive in any order and any shape; the result is the same (ties are broken by the
lower index), so chunking never changes what is stored. With ``dense=False`` only the top-k arrays
are kept: memory is ``O((n_test + n_train) k)``, never ``n_test x n_train``.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from cache_format import names as fmt
from cache_format.atomic import atomic_write
from precompute.cache.writer import CacheWriter

#: the dense score memmap is flushed and its pages released after this many bytes of tiles
RELEASE_BYTES = 64 << 20


def select_topk(keys: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions (along axis 1) of the ``k`` largest ``keys`` per row, best first, ties broken by the
    smaller ``ids``: a total order, so merging partial results in any grouping gives the same answer.
    ``keys, ids [m, w] -> [m, min(k, w)]``."""
    m, w = keys.shape
    k = min(k, w)
    if k == 0:
        return np.zeros((m, 0), np.int64)
    if k == w:
        return np.lexsort((ids, -keys), axis=-1)
    part = np.argpartition(-keys, k - 1, axis=1)
    kth = np.take_along_axis(keys, part[:, k - 1:k], axis=1)
    ambiguous = (keys > kth).sum(1) + (keys == kth).sum(1) > k  # ties straddle the cut
    cand = part[:, :k]
    order = np.lexsort((np.take_along_axis(ids, cand, 1), -np.take_along_axis(keys, cand, 1)), axis=-1)
    out = np.take_along_axis(cand, order, axis=1)
    if ambiguous.any():
        rows = np.flatnonzero(ambiguous)
        out[rows] = np.lexsort((ids[rows], -keys[rows]), axis=-1)[:, :k]
    return out


def topk_sorted(values: np.ndarray, k: int, axis: int = 1, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest (or smallest) entries along ``axis``, best first (ties: lower index)."""
    v = values if axis == 1 else values.T
    keys = v.astype(np.float64) if largest else -v.astype(np.float64)
    ids = np.broadcast_to(np.arange(v.shape[1]), v.shape)
    pos = select_topk(keys, ids, k)
    idx, vals = pos, np.take_along_axis(v, pos, axis=1)
    return (idx, vals) if axis == 1 else (idx.T, vals.T)


def merge_topk(ids: np.ndarray, vals: np.ndarray, new_ids: np.ndarray, new_vals: np.ndarray, k: int,
           largest: bool) -> tuple[np.ndarray, np.ndarray]:
    """Merge running top-k ``(ids, vals) [m, k]`` with candidates ``[m, w]``; returns the new ``[m, k]``."""
    all_ids = np.concatenate([ids, new_ids], axis=1)
    all_vals = np.concatenate([vals, new_vals], axis=1)
    keys = all_vals.astype(np.float64) if largest else -all_vals.astype(np.float64)
    pos = select_topk(keys, np.where(all_ids < 0, np.iinfo(all_ids.dtype).max, all_ids), k)
    return np.take_along_axis(all_ids, pos, 1), np.take_along_axis(all_vals, pos, 1)


class ScoreWriter:
    """Receives score tiles for one method and writes every derived array on :meth:`close`."""

    def __init__(self, writer: CacheWriter | None, method: str, n_test: int, n_train: int, topk: int,
                 dense: bool = True, dense_path: str | Path | None = None):
        """``writer=None`` (another rank of a torchrun launch): fold tiles only, writing dense rows into
        the ``.npy`` at ``dense_path`` that rank 0's writer created; :meth:`save_shard` hands the rest over."""
        self.writer, self.method, self.dense = writer, method, dense
        self.n_test, self.n_train = n_test, n_train
        self.k_row = min(topk, n_train)
        self.k_col = min(topk, n_test)
        if not dense:
            self.scores = None
        elif writer is not None:
            self.scores = writer.open_array(fmt.SCORES, (n_test, n_train), np.float32, method)
        else:
            self.scores = np.load(dense_path, mmap_mode="r+", allow_pickle=False)
        self.top_pro = np.full((n_test, self.k_row), -1, np.int32)
        self.top_pro_s = np.full((n_test, self.k_row), -np.inf, np.float32)
        self.top_opp = np.full((n_test, self.k_row), -1, np.int32)
        self.top_opp_s = np.full((n_test, self.k_row), np.inf, np.float32)
        self.col_sum = np.zeros(n_train, np.float64)
        self.helped_idx = np.full((n_train, self.k_col), -1, np.int32)  # per training sample (column)
        self.helped_val = np.full((n_train, self.k_col), -np.inf, np.float32)
        self.hurt_idx = np.full((n_train, self.k_col), -1, np.int32)
        self.hurt_val = np.full((n_train, self.k_col), np.inf, np.float32)
        self.covered = np.zeros(n_test, np.int64)  # columns seen per row
        self._unflushed = 0

    def _release(self) -> None:
        """Write the dense memmap's dirty pages to disk and drop them from this process's resident set
        (a mapped file's pages count in RSS: a 50k x 10k matrix would otherwise add 2 GB)."""
        self.scores.flush()
        mm = getattr(self.scores, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)
        self._unflushed = 0

    def write_rows(self, start: int, block: np.ndarray) -> None:
        """Store full rows ``start:start+b`` (``block [b, n_train]``)."""
        self.write_tile(start, 0, block)

    def write_tile(self, r0: int, c0: int, tile: np.ndarray) -> None:
        """Fold in scores of test rows ``r0:r0+b`` x training columns ``c0:c0+w`` (``tile [b, w]``)."""
        tile = np.asarray(tile, dtype=np.float32)
        r1, c1 = r0 + tile.shape[0], c0 + tile.shape[1]
        if not np.isfinite(tile).all():
            bad = int((~np.isfinite(tile)).sum())
            raise FloatingPointError(f"{self.method}: {bad} non-finite scores in test rows {r0}:{r1}")
        if self.scores is not None:
            self.scores[r0:r1, c0:c1] = tile
            self._unflushed += tile.nbytes
            if self._unflushed >= RELEASE_BYTES:
                self._release()
        cols = np.broadcast_to(np.arange(c0, c1, dtype=np.int32), tile.shape)
        rs = slice(r0, r1)
        self.top_pro[rs], self.top_pro_s[rs] = merge_topk(self.top_pro[rs], self.top_pro_s[rs], cols, tile, self.k_row, True)
        self.top_opp[rs], self.top_opp_s[rs] = merge_topk(self.top_opp[rs], self.top_opp_s[rs], cols, tile, self.k_row,
                                                      False)
        rows = np.broadcast_to(np.arange(r0, r1, dtype=np.int32)[None, :], (c1 - c0, r1 - r0))
        cs, t = slice(c0, c1), tile.T
        self.helped_idx[cs], self.helped_val[cs] = merge_topk(self.helped_idx[cs], self.helped_val[cs], rows, t,
                                                          self.k_col, True)
        self.hurt_idx[cs], self.hurt_val[cs] = merge_topk(self.hurt_idx[cs], self.hurt_val[cs], rows, t, self.k_col, False)
        self.col_sum[c0:c1] += tile.sum(axis=0, dtype=np.float64)
        self.covered[r0:r1] += c1 - c0

    @property
    def dense_path(self) -> str | None:
        """The dense matrix's file (for the other ranks of a torchrun launch)."""
        return None if self.scores is None else str(self.scores.filename)

    # ------------------------------------------------------------------ torchrun: one writer per rank
    _SHARD = ("top_pro", "top_pro_s", "top_opp", "top_opp_s", "col_sum", "helped_idx", "helped_val", "hurt_idx",
              "hurt_val", "covered")

    def save_shard(self, path: str | Path, self_influence: np.ndarray) -> None:
        """Write this rank's folded state (and its self-influence blocks, zero elsewhere) to ``path``."""
        if self.scores is not None:
            self._release()
            self.scores = None
        arrays = {k: getattr(self, k) for k in self._SHARD} | {"self_influence": self_influence}
        atomic_write(path, lambda fh: np.savez(fh, **arrays))

    def absorb_shard(self, path: str | Path, self_influence: np.ndarray) -> None:
        """Merge another rank's :meth:`save_shard` into this one (its test rows are disjoint from ours;
        per-column top-k by the same total order, so the merge is exact); adds its self-influence blocks
        into ``self_influence`` in place."""
        with np.load(path, allow_pickle=False) as z:
            rows = np.flatnonzero(z["covered"] > 0)
            if (self.covered[rows] > 0).any():
                raise RuntimeError(f"{self.method}: {path}: test rows scored by two ranks")
            for k in ("top_pro", "top_pro_s", "top_opp", "top_opp_s"):
                getattr(self, k)[rows] = z[k][rows]
            self.covered += z["covered"]
            self.col_sum += z["col_sum"]
            self.helped_idx, self.helped_val = merge_topk(self.helped_idx, self.helped_val, z["helped_idx"],
                                                      z["helped_val"], self.k_col, True)
            self.hurt_idx, self.hurt_val = merge_topk(self.hurt_idx, self.hurt_val, z["hurt_idx"], z["hurt_val"],
                                                  self.k_col, False)
            self_influence += z["self_influence"]

    def close(self, self_influence: np.ndarray) -> None:
        """Flush and save the derived arrays; every (row, column) must have been scored exactly once."""
        if not (self.covered == self.n_train).all():
            bad = np.flatnonzero(self.covered != self.n_train)
            raise RuntimeError(f"{self.method}: test rows {bad[:5].tolist()}... were not scored against every "
                               "training sample exactly once")
        w, m = self.writer, self.method
        if self.scores is not None:
            self._release()
            self.scores = None
        w.save_array(fmt.TOP_PROPONENTS, self.top_pro, m)
        w.save_array(fmt.TOP_PROPONENT_SCORES, self.top_pro_s, m)
        w.save_array(fmt.TOP_OPPONENTS, self.top_opp, m)
        w.save_array(fmt.TOP_OPPONENT_SCORES, self.top_opp_s, m)
        w.save_array(fmt.SELF_INFLUENCE, np.asarray(self_influence, np.float32), m)
        w.save_array(fmt.TRAIN_NET_INFLUENCE, (self.col_sum / max(self.n_test, 1)).astype(np.float32), m)
        w.save_array(fmt.TRAIN_TOP_HELPED, self.helped_idx, m)
        w.save_array(fmt.TRAIN_TOP_HELPED_SCORES, self.helped_val, m)
        w.save_array(fmt.TRAIN_TOP_HURT, self.hurt_idx, m)
        w.save_array(fmt.TRAIN_TOP_HURT_SCORES, self.hurt_val, m)
