"""Per-run read helpers for the pages: memmaps opened once, small rows read on demand, thumbnails cached.

A :class:`RunView` wraps one :class:`~cache_format.RunCache` (itself cached by ``st.cache_resource``
in :mod:`explorer.state`), so everything here lives as long as the run stays open. Score matrices
are never read whole: only single rows ``[n_train]`` and the precomputed top-k arrays.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cache_format import names as fmt
from cache_format.predicted import PredictedTopK, load_predicted
from cache_format.runs import RunCache
from components.images import data_uri

_THUMBS_MAX = 20_000


@dataclass(frozen=True)
class TopK:
    """Top-k proponents and opponents of one sample: ids ``[k]`` (int) and scores ``[k]`` (float32)."""

    pro: np.ndarray
    pro_scores: np.ndarray
    opp: np.ndarray
    opp_scores: np.ndarray

    @property
    def scale(self) -> float:
        """Largest |score| shown, used to scale the score bars."""
        s = np.abs(np.concatenate([self.pro_scores, self.opp_scores]))
        return float(s.max()) if s.size and s.max() > 0 else 1.0


class RunView:
    """Cheap, cached access to one run for the UI."""

    def __init__(self, run: RunCache):
        self.run = run
        self.name = run.name
        self.n_train, self.n_test = run.n_train, run.n_test
        self.class_names = run.class_names
        self.methods = run.methods
        s = run.samples
        self.train: pd.DataFrame = s[s["split"] == "train"].set_index("index", drop=False).rename_axis(None).sort_index()
        self.test: pd.DataFrame = s[s["split"] == "test"].set_index("index", drop=False).rename_axis(None).sort_index()
        self.images = {"train": run.array(fmt.TRAIN_IMAGES), "test": run.array(fmt.TEST_IMAGES)}
        self.probs = {"train": run.array(fmt.TRAIN_PROBS), "test": run.array(fmt.TEST_PROBS)}
        self._arrays: dict[tuple[str, str], np.ndarray] = {}
        self._thumbs: dict[tuple[str, int, int], str] = {}
        self._memo: dict[Any, Any] = {}
        self._lock = threading.Lock()

    # --- arrays ---------------------------------------------------------------------------------
    def method_array(self, method: str, name: str) -> np.ndarray:
        """A per-method memmap, opened once."""
        key = (method, name)
        if key not in self._arrays:
            self._arrays[key] = self.run.method_array(method, name)
        return self._arrays[key]

    @property
    def embedding(self) -> np.ndarray:
        """``[n_train + n_test, 2]`` UMAP coordinates (train rows first)."""
        if "embedding" not in self._memo:
            self._memo["embedding"] = np.asarray(self.run.array(fmt.EMBEDDING), dtype=np.float32)
        return self._memo["embedding"]

    @property
    def all_labels(self) -> np.ndarray:
        """``[n_train + n_test]`` labels in embedding order."""
        if "labels" not in self._memo:
            self._memo["labels"] = np.concatenate([self.train["label"].to_numpy(), self.test["label"].to_numpy()])
        return self._memo["labels"]

    def thumb(self, split: str, index: int, px: int = 96) -> str:
        """PNG data URI of sample ``index`` of ``split`` upscaled to about ``px`` pixels (cached)."""
        key = (split, int(index), px)
        uri = self._thumbs.get(key)
        if uri is None:
            uri = data_uri(np.asarray(self.images[split][int(index)]), px)
            with self._lock:
                if len(self._thumbs) > _THUMBS_MAX:
                    self._thumbs.clear()
                self._thumbs[key] = uri
        return uri

    def sample(self, split: str, index: int) -> pd.Series:
        """The samples-table row of one sample."""
        return (self.train if split == "train" else self.test).loc[int(index)]

    def source_file(self, split: str, index: int) -> str | None:
        """The sample's source file, relative to the dataset folder (``samples.parquet``'s ``path``
        column, written for image-folder datasets); ``None`` for other datasets."""
        df = self.train if split == "train" else self.test
        if "path" not in df.columns:
            return None
        p = df.at[int(index), "path"]
        return str(p) if isinstance(p, str) and p else None

    @property
    def source_root(self) -> str | None:
        """The dataset folder the run was built from (the manifest's ``dataset.source_path``), if recorded."""
        root = (self.run.manifest.get("dataset") or {}).get("source_path")
        return str(root) if root else None

    # --- influence ------------------------------------------------------------------------------
    def top(self, method: str, test: int, k: int) -> TopK:
        """Precomputed top-k proponents/opponents (training ids) of test point ``test``."""
        g = self.method_array
        return TopK(np.array(g(method, fmt.TOP_PROPONENTS)[test, :k]), np.array(g(method, fmt.TOP_PROPONENT_SCORES)[test, :k]),
                    np.array(g(method, fmt.TOP_OPPONENTS)[test, :k]), np.array(g(method, fmt.TOP_OPPONENT_SCORES)[test, :k]))

    def reverse(self, method: str, train: int, k: int) -> TopK:
        """Precomputed test points that training sample ``train`` helps (``pro``) or hurts (``opp``) most."""
        g = self.method_array
        return TopK(np.array(g(method, fmt.TRAIN_TOP_HELPED)[train, :k]), np.array(g(method, fmt.TRAIN_TOP_HELPED_SCORES)[train, :k]),
                    np.array(g(method, fmt.TRAIN_TOP_HURT)[train, :k]), np.array(g(method, fmt.TRAIN_TOP_HURT_SCORES)[train, :k]))

    def predicted(self, method: str) -> PredictedTopK | None:
        """The checked top-k toward the predicted label of ``method`` (misclassified test points only),
        read once; ``None`` when the run has none (raises ``CacheProblem`` for damaged arrays)."""
        return self.memo(("predicted", method), lambda: load_predicted(self.run, method))

    def top_predicted(self, method: str, test: int, k: int) -> tuple[TopK, int] | None:
        """Top-k proponents/opponents of test point ``test`` toward its predicted label, and that label;
        ``None`` when not precomputed (an older run, a method without it, a correctly predicted point)."""
        got = self.predicted(method)
        i = None if got is None else got.position(test)
        if got is None or i is None:
            return None
        return (TopK(np.array(got.pro[i, :k]), np.array(got.pro_scores[i, :k]), np.array(got.opp[i, :k]),
                     np.array(got.opp_scores[i, :k])), int(got.labels[i]))

    def topk_max(self, method: str) -> int:
        """How many top-k entries the cache stores per test point."""
        return int(self.method_array(method, fmt.TOP_PROPONENTS).shape[1])

    def has_full_rows(self, method: str) -> bool:
        """Whether the run stores the full score matrix of ``method`` (else only its top-k)."""
        return self.run.has_dense_scores(method)

    def score_row(self, method: str, test: int) -> np.ndarray:
        """One row of the score matrix: test point ``test`` vs every training sample ``[n_train]`` (a copy).

        For a top-k-only run (:meth:`has_full_rows` False) only the stored proponents and opponents
        have their scores; every other entry is 0."""
        if self.has_full_rows(method):
            return np.array(self.method_array(method, fmt.SCORES)[int(test)], dtype=np.float32)
        row = np.zeros(self.n_train, np.float32)
        t = self.top(method, test, self.topk_max(method))
        row[t.pro], row[t.opp] = t.pro_scores, t.opp_scores
        return row

    def train_stat(self, method: str, name: str, train: int) -> tuple[float, float]:
        """Value of a per-training-sample array (self_influence, train_net_influence) and its percentile."""
        key = ("sorted", method, name)
        if key not in self._memo:
            self._memo[key] = np.sort(np.asarray(self.method_array(method, name), dtype=np.float64))
        srt = self._memo[key]
        value = float(self.method_array(method, name)[int(train)])
        return value, 100.0 * float(np.searchsorted(srt, value, side="left")) / max(len(srt), 1)

    def memo_last(self, slot: str, key: Any, make) -> Any:
        """Like :meth:`memo` but keeps only the latest ``key`` per ``slot`` (for per-selection objects)."""
        held = self._memo.get(("last", slot))
        if held is None or held[0] != key:
            held = (key, make())
            self._memo[("last", slot)] = held
        return held[1]

    def memo(self, key: Any, make) -> Any:
        """Keep a derived object (e.g. a figure) for the life of the run."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]


def view(run: RunCache) -> RunView:
    """The :class:`RunView` of an open run (created once, stored on the cached run object)."""
    v = run.__dict__.get("_ie_view")
    if v is None:
        v = RunView(run)
        run.__dict__["_ie_view"] = v
    return v
