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


def inject_label_noise(y: np.ndarray, n_classes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``round(fraction * n)`` labels, chosen at random, each to a uniformly random *other* class.

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
