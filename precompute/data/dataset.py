"""The dataset a run works on (in memory or streamed), label noise and label overrides."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from precompute.errors import DataError


def _hash_rows(h: Any, x: Any) -> None:
    """Feed ``x``'s float32 rows to ``h``: an in-memory array at once, a lazy source chunk by chunk
    (the same bytes, so a streamed dataset has the fingerprint of the same data in memory)."""
    from precompute.data.source import ArraySource, SampleSource

    if isinstance(x, np.memmap):
        x = ArraySource(x)
    if isinstance(x, SampleSource):
        for s, e in x.chunks():
            h.update(x.read_range(s, e).numpy().tobytes())
    else:
        h.update(np.ascontiguousarray(x).tobytes())


@dataclass
class SplitDataset:
    """A train/test split ready for training.

    Shapes: ``x_*`` ``[n, *input_shape]`` float32; ``y_*`` ``[n]`` int64 (``y_train`` is the label the
    model is trained on, after any injected noise); ``images_*`` ``[n, H, W]`` or ``[n, H, W, 3]``
    uint8 for rendering; ``y_train_original`` ``[n_train]``; ``flipped`` ``[n_train]`` bool.

    Streamed datasets hold a :class:`~precompute.data.source.SampleSource` in ``x_*`` (read by rows,
    never whole) and a :class:`~precompute.data.display.DisplaySource` in ``images_*`` (thumbnails
    rendered chunk by chunk); both have ``shape`` and ``len`` like the arrays.
    """

    name: str
    x_train: Any
    y_train: np.ndarray
    x_test: Any
    y_test: np.ndarray
    images_train: Any
    images_test: Any
    class_names: list[str]
    y_train_original: np.ndarray
    flipped: np.ndarray
    train_source_index: np.ndarray
    test_source_index: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        return len(self.y_test)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def streamed(self) -> bool:
        """Whether the inputs are read lazily (not in-memory arrays)."""
        return not (isinstance(self.x_train, np.ndarray) and not isinstance(self.x_train, np.memmap))

    def fingerprint(self) -> str:
        """sha256 over inputs (float32 bytes) and (possibly noisy) labels of both splits; computed in
        chunks for streamed inputs and remembered for the labels it was computed with."""
        key = hashlib.sha256(np.ascontiguousarray(self.y_train).tobytes()
                             + np.ascontiguousarray(self.y_test).tobytes()).hexdigest()
        memo = self.extra.setdefault("_fingerprints", {}) if self.streamed else {}
        if key not in memo:
            h = hashlib.sha256()
            for arr in (self.x_train, self.y_train, self.x_test, self.y_test):
                _hash_rows(h, arr)
            memo[key] = h.hexdigest()[:16]
        return memo[key]


NOISE_KINDS = ("symmetric", "pairs", "class_conditional")


def inject_label_noise(y: np.ndarray, n_classes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric noise: flip ``round(fraction * n)`` labels, chosen at random, each to a uniformly
    random *other* class.

    Returns ``(noisy_labels [n], flipped [n] bool)``; deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    n_flip = int(round(fraction * n))
    flipped = np.zeros(n, dtype=bool)
    noisy = y.copy()
    if n_flip == 0:
        return noisy, flipped
    idx = rng.choice(n, size=n_flip, replace=False)
    offsets = rng.integers(1, n_classes, size=n_flip)
    noisy[idx] = (y[idx] + offsets) % n_classes
    flipped[idx] = True
    return noisy, flipped


def _allocate(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts ``[len(weights)]`` summing to ``total``, proportional to ``weights`` (largest remainder)."""
    w = np.asarray(weights, np.float64)
    if total == 0 or w.sum() <= 0:
        return np.zeros(len(w), np.int64)
    share = total * w / w.sum()
    counts = np.floor(share).astype(np.int64)
    rest = total - int(counts.sum())
    order = np.lexsort((np.arange(len(w)), -(share - counts)))  # largest remainder first, ties by index
    counts[order[:rest]] += 1
    return counts


def inject_class_conditional_noise(y: np.ndarray, matrix: np.ndarray, fraction: float,
                                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional noise: in every class ``i`` whose row of ``matrix [C, C]`` has off-diagonal
    mass, flip exactly ``round(fraction * n_i)`` labels (chosen at random); their new labels are split
    over the classes ``j != i`` in proportion to ``matrix[i, j]`` (exact counts, largest remainder).
    The diagonal is ignored. Returns ``(noisy_labels [n], flipped [n] bool)``; deterministic per seed.
    """
    q = np.array(matrix, np.float64)
    np.fill_diagonal(q, 0.0)
    rng = np.random.default_rng(seed)
    noisy, flipped = y.copy(), np.zeros(len(y), bool)
    for c in range(len(q)):
        if q[c].sum() <= 0:
            continue
        members = np.flatnonzero(y == c)
        m = int(round(fraction * len(members)))
        if m == 0:
            continue
        idx = rng.choice(members, size=m, replace=False)
        noisy[idx] = rng.permutation(np.repeat(np.arange(len(q)), _allocate(m, q[c])))
        flipped[idx] = True
    return noisy, flipped


def pairs_matrix(pairs: list[tuple[int, int]], n_classes: int) -> np.ndarray:
    """The class-conditional matrix of pair noise: ``a -> b`` and ``b -> a`` for each pair."""
    q = np.zeros((n_classes, n_classes))
    for a, b in pairs:
        q[a, b] = q[b, a] = 1.0
    return q


def _row_chunks(x: Any, rows: int = 4096):
    """``x [n, ...]`` as float64 numpy blocks ``[b, d]`` (an array at once, a lazy source chunk by chunk)."""
    from precompute.data.source import ArraySource, SampleSource

    if isinstance(x, np.memmap):
        x = ArraySource(x)
    if isinstance(x, SampleSource):
        for s, e in x.chunks():
            yield x.read_range(s, e).numpy().reshape(e - s, -1).astype(np.float64)
        return
    x = np.asarray(x)
    for s in range(0, len(x), rows):
        yield x[s:s + rows].reshape(len(x[s:s + rows]), -1).astype(np.float64)


def nearest_centroid_confusion(x: Any, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix ``[C, C]`` (row = label, column = prediction) of a nearest-centroid classifier
    on ``x [n, ...]`` itself: a cheap, deterministic, model-free stand-in for "the model's confusion
    matrix" before any model is trained. Two passes over the rows, never the data whole."""
    y = np.asarray(y, np.int64)
    sums, counts, s = None, np.bincount(y, minlength=n_classes).astype(np.float64), 0
    for block in _row_chunks(x):
        if sums is None:
            sums = np.zeros((n_classes, block.shape[1]))
        np.add.at(sums, y[s:s + len(block)], block)
        s += len(block)
    cent = sums / np.maximum(counts, 1)[:, None]
    conf, s = np.zeros((n_classes, n_classes), np.int64), 0
    for block in _row_chunks(x):
        d = (block ** 2).sum(1, keepdims=True) - 2 * block @ cent.T + (cent ** 2).sum(1)
        d[:, counts == 0] = np.inf
        np.add.at(conf, (y[s:s + len(block)], d.argmin(1)), 1)
        s += len(block)
    return conf


def confusable_pairs(confusion: np.ndarray, n_pairs: int) -> list[tuple[int, int]]:
    """Up to ``n_pairs`` disjoint class pairs, most confused first (symmetrised counts; ties by index)."""
    c = np.asarray(confusion, np.float64)
    sym = c + c.T
    cand = sorted((-sym[a, b], a, b) for a in range(len(c)) for b in range(a + 1, len(c)))
    used: set[int] = set()
    out: list[tuple[int, int]] = []
    for _neg, a, b in cand:
        if len(out) >= n_pairs:
            break
        if a not in used and b not in used:
            out.append((a, b))
            used |= {a, b}
    return out


def confusion_matrix_noise(confusion: np.ndarray) -> np.ndarray:
    """Class-conditional destinations from a confusion matrix: off-diagonal counts (a class that is
    never confused sends its flips uniformly to the other classes)."""
    q = np.asarray(confusion, np.float64).copy()
    np.fill_diagonal(q, 0.0)
    empty = q.sum(1) == 0
    q[empty] = 1.0
    np.fill_diagonal(q, 0.0)
    return q


def load_noise_matrix(value: Any, n_classes: int) -> np.ndarray:
    """``data.noise_matrix`` (a list of rows or a ``.npy`` path) as ``[C, C]`` float64, validated."""
    from pathlib import Path

    where = "data.noise_matrix"
    if isinstance(value, str):
        where = f"{value}"
        try:
            m = np.load(Path(value), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{where}: cannot read the noise matrix ({exc}); pass a .npy file of shape "
                            f"[{n_classes}, {n_classes}]") from None
    else:
        m = np.asarray(value, np.float64)
    if m.shape != (n_classes, n_classes) or not np.issubdtype(m.dtype, np.number):
        raise DataError(f"{where}: noise matrix must be numeric [{n_classes}, {n_classes}] (one row and column "
                        f"per class), got shape {list(m.shape)}")
    m = m.astype(np.float64)
    if not np.isfinite(m).all() or (m < 0).any():
        raise DataError(f"{where}: noise matrix entries must be finite and >= 0")
    return m


def apply_label_noise(ds: SplitDataset, cfg: Any) -> SplitDataset:
    """Inject ``cfg.label_noise`` of the configured ``cfg.noise_kind`` into ``ds`` (a ``DataConfig``).

    * ``symmetric``: ``round(f * n)`` random samples, each to a random other class.
    * ``pairs``: in each class of ``cfg.noise_pairs`` (or of the ``cfg.noise_n_pairs`` most confused
      pairs of :func:`nearest_centroid_confusion` on the clean training split), exactly
      ``round(f * n_class)`` samples flip to the partner class.
    * ``class_conditional``: :func:`inject_class_conditional_noise` with ``cfg.noise_matrix`` (or the
      nearest-centroid confusion matrix).

    Sets ``ds.y_train``/``ds.flipped`` and records what was done in ``ds.extra["label_noise"]``.
    """
    kind = getattr(cfg, "noise_kind", None) or "symmetric"
    y, c, f, seed = ds.y_train_original, ds.n_classes, cfg.label_noise, cfg.noise_seed
    info: dict[str, Any] = {"kind": kind, "fraction": f, "seed": seed}
    if kind == "symmetric":
        ds.y_train, ds.flipped = inject_label_noise(y, c, f, seed)
    elif kind == "pairs":
        pairs = [tuple(int(v) for v in p) for p in (cfg.noise_pairs or [])]
        bad = [p for p in pairs if not all(0 <= v < c for v in p)]
        if bad:
            raise DataError(f"data.noise_pairs: class {list(bad[0])} out of range; classes are 0..{c - 1}")
        if not pairs:
            pairs = confusable_pairs(nearest_centroid_confusion(ds.x_train, y, c), cfg.noise_n_pairs)
            info["pairs_from"] = "nearest-centroid confusion matrix of the clean training split"
        info["pairs"] = [list(p) for p in pairs]
        ds.y_train, ds.flipped = inject_class_conditional_noise(y, pairs_matrix(pairs, c), f, seed)
    elif kind == "class_conditional":
        if cfg.noise_matrix is None:
            m = confusion_matrix_noise(nearest_centroid_confusion(ds.x_train, y, c))
            info["matrix_from"] = "nearest-centroid confusion matrix of the clean training split"
        else:
            m = load_noise_matrix(cfg.noise_matrix, c)
        info["matrix"] = np.round(m, 6).tolist()
        ds.y_train, ds.flipped = inject_class_conditional_noise(y, m, f, seed)
    else:
        raise DataError(f"data.noise_kind: unknown kind {kind!r}; use one of {list(NOISE_KINDS)}")
    info["n_flipped"] = int(ds.flipped.sum())
    ds.extra["label_noise"] = info
    return ds


def read_labels_override(path: str, n_train: int, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a CSV ``index,label`` of training labels; ``label`` is a class index or a class name.

    Returns ``(indices [m], labels [m])``. Raises :class:`DataError` naming the file, the row and the fix.
    """
    import csv

    where = f"{path}"
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            if "index" not in cols or "label" not in cols:
                raise DataError(f"{where}: labels override needs columns 'index,label' (found {cols}); "
                                "export it from the review page or write a CSV with that header")
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except OSError as exc:
        raise DataError(f"{where}: cannot read labels override ({exc.strerror or exc}); pass a readable CSV") from None
    except UnicodeDecodeError:
        raise DataError(f"{where}: labels override is not UTF-8 text; pass a CSV file (index,label)") from None
    by_name = {name: i for i, name in enumerate(class_names)}
    idx, lab = np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64)
    for r, row in enumerate(rows):
        line = r + 2
        try:
            idx[r] = int(row["index"])
        except ValueError:
            raise DataError(f"{where}: line {line}: index {row['index']!r} is not an integer; "
                            f"use training indices 0..{n_train - 1}") from None
        if not 0 <= idx[r] < n_train:
            raise DataError(f"{where}: line {line}: index {idx[r]} is out of range; the training set has "
                            f"indices 0..{n_train - 1} (was the file made for another run?)")
        v = row["label"]
        if v in by_name:
            lab[r] = by_name[v]
        elif v.lstrip("-").isdigit() and 0 <= int(v) < len(class_names):
            lab[r] = int(v)
        else:
            raise DataError(f"{where}: line {line}: label {v!r} is not a class; use a class index "
                            f"0..{len(class_names) - 1} or one of {class_names}")
    if len(np.unique(idx)) != len(idx):
        dup = int(idx[np.flatnonzero(np.bincount(idx) > 1)[0]]) if len(idx) else -1
        raise DataError(f"{where}: index {dup} appears more than once; keep one row per training index")
    return idx, lab


def apply_labels_override(ds: SplitDataset, path: str) -> SplitDataset:
    """Replace training labels from ``path`` (after noise injection); records what changed in ``ds.extra``.

    ``flipped`` becomes ``y_train != y_train_original``: the labels still differing from the source.
    """
    idx, lab = read_labels_override(path, ds.n_train, ds.class_names)
    before = ds.y_train.copy()
    ds.y_train = ds.y_train.copy()
    ds.y_train[idx] = lab
    ds.flipped = ds.y_train != ds.y_train_original
    ds.extra["labels_override"] = {"path": str(path), "rows": int(len(idx)),
                                   "changed": int((before != ds.y_train).sum())}
    return ds


def read_exclude(path: str, n_train: int) -> np.ndarray:
    """Training indices to drop, from a CSV with an ``index`` column (the review page's excluded samples);
    sorted ``[m]``. Raises :class:`DataError` naming the file, the line and the fix."""
    import csv

    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            if "index" not in cols:
                raise DataError(f"{path}: the exclude file needs an 'index' column (found {cols}); use the review "
                                "page's excluded samples CSV")
            reader.fieldnames = cols
            values = [(row.get("index") or "").strip() for row in reader]
    except OSError as exc:
        raise DataError(f"{path}: cannot read the exclude file ({exc.strerror or exc}); pass a readable CSV") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: the exclude file is not UTF-8 text; pass a CSV with an 'index' column") from None
    idx = np.zeros(len(values), np.int64)
    for r, v in enumerate(values):
        if not v.isdigit() or not 0 <= int(v) < n_train:
            raise DataError(f"{path}: line {r + 2}: index {v!r} is not a training index 0..{n_train - 1} "
                            "(was the file made for another run?)")
        idx[r] = int(v)
    idx = np.unique(idx)
    if len(idx) >= n_train:
        raise DataError(f"{path}: it excludes every training sample; keep at least one")
    return idx


def apply_exclude(ds: SplitDataset, path: str) -> SplitDataset:
    """Drop the training samples listed in ``path`` (after noise and any labels override); the others keep
    their ``train_source_index``. Streamed inputs and thumbnails stay lazy (a row subset)."""
    from precompute.data.display import subset_display
    from precompute.data.source import SampleSource, SubsetSource, subset_rows

    drop = read_exclude(path, ds.n_train)
    keep = np.setdiff1d(np.arange(ds.n_train), drop)
    x = ds.x_train
    ds.x_train = SubsetSource(x, keep) if isinstance(x, SampleSource) else subset_rows(x, keep)
    ds.images_train = subset_display(ds.images_train, keep)
    for name in ("y_train", "y_train_original", "flipped", "train_source_index"):
        setattr(ds, name, np.asarray(getattr(ds, name))[keep])
    if "train_paths" in ds.extra:
        ds.extra["train_paths"] = [ds.extra["train_paths"][i] for i in keep]
    ds.extra["excluded"] = {"path": str(path), "rows": int(len(drop))}
    return ds
