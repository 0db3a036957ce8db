"""Tables (CSV / parquet), numpy archives (``.npz``, memory-mapped) and in-memory arrays as datasets,
validated before any training.

Validation errors name the file and the column/key and say what to change: missing files, unknown
columns, labels outside the class list, a single class, an empty split, NaN/inf features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from precompute.data.dataset import SplitDataset
from precompute.errors import DataError


def encode_labels(values: np.ndarray, class_names: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Map raw labels to ``0..C-1``; ``class_names`` (if given) fixes the order and the allowed set.

    Integer labels with ``class_names`` given are indices into that list.
    """
    if class_names is not None and np.issubdtype(np.asarray(values).dtype, np.integer):
        v = np.asarray(values, np.int64)
        bad = sorted(set(v[(v < 0) | (v >= len(class_names))].tolist()))
        if bad:
            raise DataError(f"{where}: labels {[str(b) for b in bad[:5]]} are not in the class list {class_names} "
                            f"(integer labels index it: 0..{len(class_names) - 1}); fix the labels or the class names")
        return v, list(class_names)
    raw = [str(v) for v in values]
    if class_names is None:
        uniq = sorted(set(raw), key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s))
        class_names = uniq
    index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted({r for r in raw if r not in index})
    if unknown:
        raise DataError(f"{where}: labels {unknown[:5]} are not in the class list {class_names}; fix the labels "
                        "or data.class_names")
    return np.array([index[r] for r in raw], np.int64), list(class_names)


def check_labels(y_train: np.ndarray, y_test: np.ndarray, class_names: list[str], where: str) -> None:
    if len(y_train) == 0 or len(y_test) == 0:
        split = "train" if len(y_train) == 0 else "test"
        raise DataError(f"{where}: the {split} split is empty; add samples or change data.test_fraction")
    if len(np.unique(y_train)) < 2:
        raise DataError(f"{where}: the training labels hold a single class ({class_names[int(y_train[0])]!r}); "
                        "influence needs at least two classes")


def check_finite(x: np.ndarray, where: str, names: list[str] | None = None) -> None:
    bad = ~np.isfinite(x.reshape(len(x), -1))
    if bad.any():
        col = int(np.flatnonzero(bad.any(0))[0])
        name = names[col] if names else f"feature {col}"
        raise DataError(f"{where}: {int(bad.any(1).sum())} rows have NaN/inf features (first in {name!r}); "
                        "drop or impute them before precompute")


def stratified_split(n: int, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split  # lazily: scoring needs no sklearn

    idx = np.arange(n)
    strat = y if np.bincount(y).min() >= 2 else None
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=strat)
    return np.sort(tr), np.sort(te)


def feature_strip_images(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Render feature vectors ``[n, d]`` as one-row grayscale strips ``[n, 1, d]`` uint8 (for the UI)."""
    scaled = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)[:, None, :]


def _finish(name, x_tr, y_tr, x_te, y_te, img_tr, img_te, class_names, idx_tr, idx_te, extra) -> SplitDataset:
    return SplitDataset(name=name, x_train=x_tr, y_train=y_tr.copy(), x_test=x_te, y_test=y_te,
                        images_train=img_tr, images_test=img_te, class_names=class_names,
                        y_train_original=y_tr.copy(), flipped=np.zeros(len(y_tr), bool),
                        train_source_index=idx_tr, test_source_index=idx_te, extra=extra)


def load_table(path: str | Path, label_column: str, feature_columns: list[str] | None = None,
               test_fraction: float = 0.2, seed: int = 0, class_names: list[str] | None = None) -> SplitDataset:
    """CSV or parquet with one label column; a ``split`` column (train/test) is used if present."""
    import pandas as pd  # only tables need it

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: table not found; set data.path to a .csv or .parquet file")
    try:
        df = pd.read_parquet(p) if p.suffix.lower() in (".parquet", ".pq") else pd.read_csv(p)
    except Exception as exc:
        raise DataError(f"{p}: cannot read table ({type(exc).__name__}: {exc}); pass a valid CSV/parquet") from None
    if len(df) == 0:
        raise DataError(f"{p}: has no rows (only a header: columns {list(df.columns)[:10]}); add the samples, "
                        "one per row")
    if label_column not in df.columns:
        raise DataError(f"{p}: no label column {label_column!r}; columns are {list(df.columns)[:10]}; "
                        "set data.label_column")
    if df[label_column].isna().any():
        raise DataError(f"{p}: {int(df[label_column].isna().sum())} rows have no label in {label_column!r}; "
                        "drop them or fill the labels")
    reserved = {label_column, "split"}
    cols = feature_columns or [c for c in df.columns if c not in reserved]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{p}: feature columns {missing} not found; columns are {list(df.columns)[:10]}")
    non_numeric = [c for c in cols if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        raise DataError(f"{p}: feature columns {non_numeric[:5]} are not numeric; encode them or list only "
                        "numeric columns in data.feature_columns")
    x = df[cols].to_numpy(np.float64)
    check_finite(x, str(p), cols)
    y, names = encode_labels(df[label_column].to_numpy(), class_names, f"{p} column {label_column!r}")
    if "split" in df.columns:
        split = df["split"].astype(str).str.lower()
        tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    else:
        tr, te = stratified_split(len(df), y, test_fraction, seed)
    check_labels(y[tr], y[te], names, str(p))
    mu, sd = x[tr].mean(0), x[tr].std(0)
    xs = ((x - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)  # standardised with train statistics
    lo, hi = x[tr].min(0), x[tr].max(0)
    return _finish(p.stem, xs[tr], y[tr], xs[te], y[te], feature_strip_images(x[tr], lo, hi),
                   feature_strip_images(x[te], lo, hi), names, tr, te,
                   {"feature_columns": cols, "source_path": str(p)})


def arrays_to_dataset(name: str, x_train, y_train, x_test, y_test, class_names: list[str] | None = None,
                      where: str = "arrays") -> SplitDataset:
    """Validate in-memory arrays and wrap them as a :class:`SplitDataset`.

    ``x`` of shape ``[n, d]`` is a feature table (rendered as feature strips); ``[n, H, W]`` or
    ``[n, C, H, W]`` (C = 1 or 3) are images (rendered as pictures). Labels are class indices (with
    ``class_names``) or any values (sorted to define the classes).
    """
    x_tr, x_te = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{where}: X_train samples have shape {x_tr.shape[1:]} but X_test {x_te.shape[1:]}; "
                        "make them equal")
    for key, arr, lab in (("X_train", x_tr, y_train), ("X_test", x_te, y_test)):
        if len(arr) != len(lab):
            raise DataError(f"{where}: {key} has {len(arr)} rows but its labels have {len(lab)}; make them equal")
        check_finite(arr, f"{where} {key}")
    y_all, names = encode_labels(np.concatenate([y_train, y_test]), class_names, f"{where} y_train/y_test")
    y_tr, y_te = y_all[:len(x_tr)], y_all[len(x_tr):]
    check_labels(y_tr, y_te, names, where)
    if x_tr.ndim == 2:
        lo, hi = x_tr.min(0), x_tr.max(0)
        img_tr, img_te = feature_strip_images(x_tr, lo, hi), feature_strip_images(x_te, lo, hi)
    elif x_tr.ndim in (3, 4):
        if x_tr.ndim == 4 and x_tr.shape[1] not in (1, 3):
            raise DataError(f"{where}: X_train has shape {x_tr.shape}; images must be [n, H, W] or [n, C, H, W] "
                            "with C 1 or 3")
        lo, hi = x_tr.min(), x_tr.max()

        def to_img(a: np.ndarray) -> np.ndarray:
            a = np.clip(np.round((a - lo) / (hi - lo or 1.0) * 255), 0, 255).astype(np.uint8)
            return a[:, 0] if a.ndim == 4 and a.shape[1] == 1 else (a.transpose(0, 2, 3, 1) if a.ndim == 4 else a)

        img_tr, img_te = to_img(x_tr), to_img(x_te)
        if x_tr.ndim == 3:
            x_tr, x_te = x_tr[:, None], x_te[:, None]
    else:
        raise DataError(f"{where}: X_train has {x_tr.ndim} dimensions; use [n, d] features or [n, (C,) H, W] images")
    return _finish(name, x_tr.astype(np.float32), y_tr, x_te.astype(np.float32), y_te, img_tr, img_te, names,
                   np.arange(len(x_tr)), np.arange(len(x_te)), {})
