"""Your own datasets: ``data.factory = "file.py:make_datasets"`` returning ``(train, test)`` map-style
``torch.utils.data.Dataset`` s whose items are ``(x, y)``: ``x`` a tensor (every sample the same
shape, the model's input), ``y`` an int class index.

Loading makes one validating pass over both datasets (through a ``DataLoader`` with
``data.workers`` processes): labels are collected (``[n]`` ints, the only per-sample state kept),
every item is checked and the value range for default thumbnails is found. Nothing else is kept:
stages read batches on demand. Class names: ``data.class_names``, else the train dataset's
``classes`` attribute, else ``"0".."C-1"``.

What the app shows per sample: the dataset's ``display(i)`` method or else a module-level
``display(split, index)`` in the factory's file, returning a PIL image (a thumbnail), a str or a
dict (a ``text`` column in ``samples.parquet``); without a hook, image-like ``x`` (``[C, H, W]`` with
C 1 or 3, or ``[H, W]``) are shown as images and anything else as a feature strip.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from precompute.data.display import DisplaySource, HookDisplay, ScaledDisplay
from precompute.data.source import DatasetSource, _mp_context
from precompute.errors import DataError
from precompute.user_model import load_factory

SCAN_BATCH = 256


def _items(batch: list[Any]) -> list[Any]:
    return batch


def _label(y: Any) -> int | None:
    if isinstance(y, torch.Tensor) and y.dim() == 0 and not y.is_floating_point() and y.dtype != torch.bool:
        return int(y.item())
    if isinstance(y, int | np.integer) and not isinstance(y, bool | np.bool_):
        return int(y)
    return None


def _check_item(item: Any, i: int, split: str, where: str, shape: tuple[int, ...] | None) -> tuple[torch.Tensor, int]:
    """``(x float32, y)`` of one item, or a one-line DataError naming the sample and the fix."""
    head = f"{where}: {split} sample {i}"
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise DataError(f"{head} is a {type(item).__name__}, not an (x, y) pair; make __getitem__ return "
                        "(tensor, int label)")
    x, y = item
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{head}: x is a {type(x).__name__}, not a torch.Tensor; return torch.as_tensor(x)")
    if x.is_complex() or x.dtype == torch.bool:
        raise DataError(f"{head}: x has dtype {x.dtype}; return a float (or integer) tensor")
    label = _label(y)
    if label is None:
        raise DataError(f"{head}: y is {type(y).__name__} {y!r}, not an int class index; return int(label)")
    if shape is not None and tuple(x.shape) != shape:
        raise DataError(f"{head}: x has shape {tuple(x.shape)} but sample 0 has {shape}; make every sample the "
                        "same shape (resize or pad in the dataset)")
    return x.detach().to("cpu", torch.float32), label


def _scan(ds: Any, split: str, where: str, workers: int, stats: bool) -> tuple[np.ndarray, tuple[int, ...], Any, Any]:
    """One pass: ``(labels [n] int64, sample shape, lo, hi)``; with ``stats`` the value range of x for
    default thumbnails (per feature for strips, global for images), else None."""
    n = len(ds)
    if n == 0:
        raise DataError(f"{where}: the {split} dataset is empty; return samples in both datasets")
    loader = torch.utils.data.DataLoader(ds, batch_size=SCAN_BATCH, num_workers=workers, collate_fn=_items,
                                         multiprocessing_context=_mp_context() if workers else None)
    labels = np.zeros(n, np.int64)
    shape: tuple[int, ...] | None = None
    lo = hi = None
    i = 0
    try:
        for batch in loader:
            xs = []
            for item in batch:
                x, labels[i] = _check_item(item, i, split, where, shape)
                shape = tuple(x.shape) if shape is None else shape
                if not torch.isfinite(x).all():
                    raise DataError(f"{where}: {split} sample {i}: x has NaN/inf values; drop or impute them")
                xs.append(x)
                i += 1
            if stats and xs:
                a = torch.stack(xs).to(torch.float64).reshape(len(xs), -1).numpy()
                cl, ch = (a.min(0), a.max(0)) if _is_strip(shape) else (a.min(), a.max())
                lo, hi = (cl, ch) if lo is None else (np.minimum(lo, cl), np.maximum(hi, ch))
    except DataError:
        raise
    except Exception as exc:  # the user's __getitem__ failed somewhere in batch i // SCAN_BATCH: find where
        j, exc = _first_failure(ds, i, min(i + SCAN_BATCH, n), exc)
        raise DataError(f"{where}: reading {split} sample {j} failed ({type(exc).__name__}: {exc}); fix the "
                        "dataset's __getitem__") from None
    if i != n:
        raise DataError(f"{where}: the {split} dataset has len {n} but yielded {i} samples; fix __len__")
    return labels, shape, lo, hi


def _first_failure(ds: Any, start: int, stop: int, exc: Exception) -> tuple[int, Exception]:
    """The first index in ``start:stop`` whose item raises (re-read in this process), and its error."""
    for j in range(start, stop):
        try:
            ds[j]
        except Exception as err:
            return j, err
    return start, exc


def _is_strip(shape: tuple[int, ...]) -> bool:
    return not (len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3)))


def _class_names(train: Any, test: Any, configured: list[str] | None, y_all: np.ndarray, where: str) -> list[str]:
    if configured:
        return list(configured)
    for ds in (train, test):
        classes = getattr(ds, "classes", None)
        if classes is not None:
            if not isinstance(classes, list | tuple) or not classes:
                raise DataError(f"{where}: the dataset's classes attribute is {type(classes).__name__}; make it a "
                                "list of class names (or set data.class_names)")
            return [str(c) for c in classes]
    return [str(c) for c in range(int(y_all.max()) + 1)]


def _display(ds: Any, module_display: Any, split: str, src: DatasetSource, lo: Any, hi: Any,
             where: str) -> DisplaySource:
    own = getattr(ds, "display", None)
    if callable(own):
        return HookDisplay(own, len(ds), f"{where} {split} dataset .display")
    if callable(module_display):
        return HookDisplay(partial(module_display, split), len(ds), f"{where} display({split!r}, i)")
    return ScaledDisplay(src, lo, hi, strips=_is_strip(src.sample_shape))


def load_factory_dataset(spec: str, class_names: list[str] | None = None, workers: int = 0):
    """Call the user's ``make_datasets`` and validate it; a :class:`SplitDataset` read lazily."""
    from precompute.data.dataset import SplitDataset
    from precompute.data.tabular import check_labels

    make = load_factory(spec, key="data.factory", what="datasets", example="make_datasets", error=DataError)
    path, func = spec.rsplit(":", 1)
    where = str(path)
    try:
        out = make()
    except Exception as exc:  # the user's code: one line
        raise DataError(f"{where}: {func}() failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise DataError(f"data.factory: {func}() in {where} returned {type(out).__name__}, not a (train, test) pair "
                        "of torch.utils.data.Dataset; return (train_dataset, test_dataset)")
    for split, d in zip(("train", "test"), out, strict=True):
        if not (hasattr(d, "__getitem__") and hasattr(d, "__len__")) or isinstance(d, torch.Tensor | np.ndarray):
            raise DataError(f"data.factory: {func}() in {where} returned a {type(d).__name__} as the {split} dataset, "
                            "not a map-style torch.utils.data.Dataset (with __len__ and __getitem__)")
    train, test = out
    y_tr, shape, lo, hi = _scan(train, "train", where, workers, True)
    y_te, shape_te, _, _ = _scan(test, "test", where, workers, False)
    if shape_te != shape:
        raise DataError(f"{where}: test samples have shape {shape_te} but train samples {shape}; make them equal")
    y_all = np.concatenate([y_tr, y_te])
    names = _class_names(train, test, class_names, y_all, where)
    for split, y in (("train", y_tr), ("test", y_te)):
        bad = np.flatnonzero((y < 0) | (y >= len(names)))
        if len(bad):
            raise DataError(f"{where}: {split} sample {int(bad[0])} has label {int(y[bad[0]])}, outside 0..{len(names) - 1} "
                            f"(classes {names[:10]}); fix the labels or the class names")
    check_labels(y_tr, y_te, names, where)
    x_tr, x_te = DatasetSource(train, shape, workers), DatasetSource(test, shape, workers)
    module_display = make.__globals__.get("display") if hasattr(make, "__globals__") else None
    return SplitDataset(
        name=Path(path).stem, x_train=x_tr, y_train=y_tr.copy(), x_test=x_te, y_test=y_te,
        images_train=_display(train, module_display, "train", x_tr, lo, hi, where),
        images_test=_display(test, module_display, "test", x_te, lo, hi, where),
        class_names=names, y_train_original=y_tr.copy(), flipped=np.zeros(len(y_tr), bool),
        train_source_index=np.arange(len(y_tr)), test_source_index=np.arange(len(y_te)),
        extra={"source_path": str(Path(path).resolve()), "factory": spec, "streamed": True},
    )
