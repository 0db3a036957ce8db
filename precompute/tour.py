"""A presenter's tour: a handful of striking examples of a run, each with a one-line reason.

Chosen in precompute, from arrays already computed (nothing new is scored), and written to
``arrays/tour.json`` (:data:`cache_format.names.TOUR`; read and checked by :mod:`cache_format.tour`,
listed by the explorer's Tour page, each entry a link into the influence or compare view):

* ``confident_mistake``: the most confident mistakes whose strongest push toward the wrong label
  (the top proponent toward the predicted label where precomputed, else the top opponent of the true
  label) is a flipped or suspected label; the most confident mistake when none is;
* ``harmful_train``: the training sample among the strongest opponents of the most test points;
* ``harmful_mislabel``: the same among the flipped (or else the most suspected) training labels;
* ``top_suspect``: the first of the default mislabel ranking (when the mislabels stage ran);
* ``most_negative``: the lowest net influence on the test set;
* ``disagreement``: the test point whose strongest proponents two methods share least.

Every array is read ``[n, k]`` or ``[n]`` at most (top-k columns, never a score matrix).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cache_format import names as fmt
from cache_format.atomic import atomic_write_json

#: top-k columns a tour looks at (the cards a presenter shows first)
TOP = 10
#: mistakes considered for a suspect proponent, most confident first
MISTAKES_SEEN = 20
#: a training sample in this top fraction of the mislabel ranking (or of self-influence) is "suspected"
SUSPECT_FRACTION = 0.05
MAX_ENTRIES = 8


@dataclass
class TourInputs:
    """What the tour is chosen from. Test side ``[n_test]``: ``y_test, pred, confidence``; train side
    ``[n_train]``: ``y_train, original``, ``flipped`` (None without ground truth); per method:
    ``top_pro, top_opp [n_test, k]``, ``net [n_train]``, ``self_inf [n_train]`` and
    ``pred_pro`` (``(rows [n_mis], ids [n_mis, k])`` toward the predicted label, or None);
    ``suspicion [n_train]`` (the default mislabel ranking, higher = more suspected) and its name."""

    y_test: np.ndarray
    pred: np.ndarray
    confidence: np.ndarray
    y_train: np.ndarray
    original: np.ndarray
    flipped: np.ndarray | None
    class_names: list[str]
    methods: list[str]
    top_pro: dict[str, np.ndarray]
    top_opp: dict[str, np.ndarray]
    net: dict[str, np.ndarray]
    self_inf: dict[str, np.ndarray]
    pred_pro: dict[str, tuple[np.ndarray, np.ndarray] | None]
    suspicion: np.ndarray | None = None
    ranking: str | None = None


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _rank_of(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each entry, highest score first (ties: lower index first) ``[n]``."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, np.float64)))
    rank = np.empty(len(scores), np.int64)
    rank[order] = np.arange(1, len(scores) + 1)
    return rank


class _Chooser:
    def __init__(self, t: TourInputs):
        self.t, self.m = t, t.methods[0]
        self.entries: list[dict[str, Any]] = []
        self.seen: set[tuple[str, int]] = set()
        n = len(t.y_train)
        self.cut = max(1, int(np.ceil(SUSPECT_FRACTION * n)))
        base = t.suspicion if t.suspicion is not None else t.self_inf[self.m]
        self.rank = _rank_of(base)
        self.rank_name = f"the {t.ranking} mislabel ranking" if t.suspicion is not None else f"self-influence ({self.m})"

    def name(self, c: int) -> str:
        return str(self.t.class_names[int(c)])

    def add(self, kind: str, split: str, index: int, title: str, reason: str, **extra: Any) -> None:
        if (split, int(index)) in self.seen or len(self.entries) >= MAX_ENTRIES:
            return
        self.seen.add((split, int(index)))
        self.entries.append({"kind": kind, "split": split, "index": int(index), "method": extra.pop("method", self.m),
                             "page": extra.pop("page", "influence"), "title": title, "reason": reason, **extra})

    def suspect(self, i: int) -> str | None:
        """Why training sample ``i`` is suspect, or None."""
        t = self.t
        if t.flipped is not None and bool(t.flipped[i]):
            return f"labelled {self.name(t.y_train[i])} but originally {self.name(t.original[i])} (a flipped label)"
        if self.rank[i] <= self.cut:
            return f"labelled {self.name(t.y_train[i])}, #{int(self.rank[i])} of {len(t.y_train)} in {self.rank_name}"
        return None

    def push_to_mistake(self, test: int) -> tuple[int, str, str] | None:
        """The strongest training sample pushing test point ``test`` toward its wrong prediction:
        ``(train id, what it is, view)``."""
        got = self.t.pred_pro.get(self.m)
        if got is not None:
            rows, ids = got
            i = int(np.searchsorted(rows, test))
            if i < len(rows) and int(rows[i]) == test and ids.shape[1]:
                return int(ids[i, 0]), f"strongest proponent toward {self.name(self.t.pred[test])}", "predicted"
        opp = self.t.top_opp[self.m]
        return (int(opp[test, 0]), f"strongest opponent of the true label {self.name(self.t.y_test[test])}",
                "true") if opp.shape[1] else None

    def confident_mistakes(self) -> None:
        t = self.t
        wrong = np.flatnonzero(np.asarray(t.pred) != np.asarray(t.y_test))
        order = wrong[np.lexsort((wrong, -np.asarray(t.confidence, np.float64)[wrong]))]
        found = 0
        for test in order[:MISTAKES_SEEN]:
            push = self.push_to_mistake(int(test))
            why = self.suspect(push[0]) if push else None
            if push and why:
                self.add("confident_mistake", "test", int(test), f"Test #{test}: a confident mistake",
                         f"{t.confidence[test]:.0%} sure this {self.name(t.y_test[test])} is a "
                         f"{self.name(t.pred[test])}; its {push[1]} ({self.m}) is train #{push[0]}, {why}.",
                         view=push[2])
                found += 1
                if found == 2:
                    return
        if not found and len(order):
            test = int(order[0])
            self.add("confident_mistake", "test", test, f"Test #{test}: the most confident mistake",
                     f"{t.confidence[test]:.0%} sure this {self.name(t.y_test[test])} is a {self.name(t.pred[test])}.",
                     view="predicted" if self.t.pred_pro.get(self.m) is not None else "true")

    def hurt_counts(self) -> np.ndarray:
        """How many test points have each training sample among their TOP strongest opponents ``[n_train]``."""
        opp = np.asarray(self.t.top_opp[self.m][:, :TOP], np.int64)
        return np.bincount(opp[opp >= 0].ravel(), minlength=len(self.t.y_train))

    def harmful(self) -> None:
        t, counts, net = self.t, self.hurt_counts(), np.asarray(self.t.net[self.m], np.float64)
        ids = np.arange(len(counts))
        order = np.lexsort((ids, net, -counts))  # most test points hurt, then lowest net influence
        if len(order) and counts[order[0]] > 0:
            i = int(order[0])
            extra = f"; {self.suspect(i)}" if self.suspect(i) else ""
            self.add("harmful_train", "train", i, f"Train #{i}: hurts the most test points",
                     f"Among the {TOP} strongest opponents of {int(counts[i])} test points ({self.m}); "
                     f"net influence {net[i]:+.3g}{extra}.")
        truth = t.flipped is not None and bool(t.flipped.any())
        flagged = np.asarray(t.flipped, bool) if truth else self.rank <= self.cut
        cand = [int(i) for i in order if flagged[i] and counts[i] > 0 and ("train", int(i)) not in self.seen]
        if cand:
            i = cand[0]
            what = "a mislabel" if truth else "a suspected mislabel"
            self.add("harmful_mislabel", "train", i, f"Train #{i}: {what} that hurts many test points",
                     f"{_upper_first(self.suspect(i) or 'suspected')}; among the {TOP} strongest opponents of "
                     f"{int(counts[i])} test points ({self.m}).")
        if t.suspicion is not None:
            i = int(np.argmin(self.rank))
            flip = t.flipped is not None and bool(t.flipped[i])
            self.add("top_suspect", "train", i, f"Train #{i}: the most suspected label",
                     f"#1 of {len(t.y_train)} in {self.rank_name}: labelled {self.name(t.y_train[i])}"
                     + (f", originally {self.name(t.original[i])} (a flipped label)." if flip else "."))
        i = int(np.lexsort((ids, net))[0]) if len(net) else None
        if i is not None:
            self.add("most_negative", "train", i, f"Train #{i}: the most harmful on average",
                     f"The lowest net influence on the test set ({self.m}): {net[i]:+.3g}.")

    def disagreement(self) -> None:
        t = self.t
        best: tuple[int, int, str, str] | None = None  # (shared, test, a, b)
        for j, a in enumerate(t.methods):
            for b in t.methods[j + 1:]:
                pa, pb = np.asarray(t.top_pro[a][:, :TOP]), np.asarray(t.top_pro[b][:, :TOP])
                k = min(pa.shape[1], pb.shape[1])
                if not k or not len(pa):
                    continue
                shared = (pa[:, :k, None] == pb[:, None, :k]).any(axis=2).sum(axis=1)
                test = int(np.argmin(shared))  # lowest index among the least shared
                if best is None or shared[test] < best[0]:
                    best = (int(shared[test]), test, a, b)
        if best is not None:
            shared, test, a, b = best
            k = min(TOP, t.top_pro[a].shape[1], t.top_pro[b].shape[1])
            self.add("disagreement", "test", test, f"Test #{test}: two methods disagree",
                     f"{a} and {b} share {shared} of their {k} strongest proponents of this test point.",
                     method=a, page="compare", b=b)


def choose_tour(t: TourInputs) -> list[dict[str, Any]]:
    """The tour's entries (at most :data:`MAX_ENTRIES`, no sample twice), in presentation order."""
    if not t.methods or not len(t.y_train):
        return []
    c = _Chooser(t)
    c.confident_mistakes()
    c.harmful()
    c.disagreement()
    return c.entries


def _load(root: Path, rel: str) -> np.ndarray | None:
    path = root / rel
    return np.load(path, mmap_mode="r", allow_pickle=False) if path.is_file() else None


def inputs_from_partial(root: Path, ds: Any, outputs: dict[str, Any], methods: list[str],
                        mislabel_info: dict[str, Any] | None) -> TourInputs:
    """The tour's inputs from a run folder being written (``root``: the writer's partial folder) plus
    the in-memory predictions (``outputs``) and dataset (``ds``: labels, flipped, class names)."""
    m = f"{fmt.METHODS_DIR}/{{}}/{{}}.npy"
    pred_pro = {}
    for name in methods:
        rows, ids = _load(root, m.format(name, fmt.PREDICTED_ROWS)), _load(root, m.format(name, fmt.PREDICTED_PROPONENTS))
        pred_pro[name] = (np.asarray(rows), ids) if rows is not None and ids is not None else None
    suspicion, ranking = None, None
    table = root / fmt.MISLABEL_SCORES
    default = (mislabel_info or {}).get("default_method")
    if table.is_file() and isinstance(default, str):
        df = pd.read_parquet(table, columns=["index", default]).sort_values("index")
        suspicion, ranking = df[default].to_numpy(np.float64), default
    flipped = np.asarray(ds.flipped, bool)
    return TourInputs(
        y_test=np.asarray(ds.y_test), pred=np.asarray(outputs["test"]["pred"]),
        confidence=np.asarray(outputs["test"]["confidence"], np.float64), y_train=np.asarray(ds.y_train),
        original=np.asarray(ds.y_train_original), flipped=flipped if flipped.any() else None,
        class_names=[str(c) for c in ds.class_names], methods=list(methods),
        top_pro={n: _load(root, m.format(n, fmt.TOP_PROPONENTS)) for n in methods},
        top_opp={n: _load(root, m.format(n, fmt.TOP_OPPONENTS)) for n in methods},
        net={n: _load(root, m.format(n, fmt.TRAIN_NET_INFLUENCE)) for n in methods},
        self_inf={n: _load(root, m.format(n, fmt.SELF_INFLUENCE)) for n in methods},
        pred_pro=pred_pro, suspicion=suspicion, ranking=ranking)


def write_tour(writer: Any, ds: Any, outputs: dict[str, Any], methods: list[str],
               mislabel_info: dict[str, Any] | None, log: Callable[[str], None]) -> int:
    """Choose the tour from what ``writer`` (a :class:`~precompute.cache.CacheWriter`) holds so far and
    write ``arrays/tour.json``; returns the number of entries."""
    root = Path(writer.tmp)
    entries = choose_tour(inputs_from_partial(root, ds, outputs, methods, mislabel_info))
    path = writer.path(fmt.TOUR)
    atomic_write_json(path, {"format": fmt.TOUR_FORMAT, "method": methods[0] if methods else None,
                             "entries": entries})
    writer.arrays[fmt.TOUR] = {"entries": len(entries)}
    log(f"[tour] {len(entries)} examples: " + ", ".join(f"{e['split']} #{e['index']}" for e in entries))
    return len(entries)
