"""Checking a run's files against its manifest before anything is shown (numpy, pandas and json only).

A cache is data from disk, perhaps damaged or hostile. :func:`check_run` reads only ``.npy`` headers,
file sizes, the small top-k and per-sample arrays and a few rows of each score matrix, so it is fast
enough to run whenever a run is opened. It raises :class:`~cache_format.runs.CacheProblem` ("damaged"
or "incomplete") naming the first bad file (relative to the cache folder) and the rebuild command.

What is checked:

- every file listed in ``manifest["arrays"]`` (``{"shape", "dtype"}`` for ``.npy``, ``{"rows",
  "columns"}`` for parquet) and every file the explorer reads: it exists, is a regular file inside
  the run (no ``..``, absolute path or symlink out), its ``.npy`` header matches the listing, the
  dataset's sizes and the file size (a truncated file is caught), and it holds no Python objects;
- a method stored as top-k only (``methods.<m>.scores = "topk"``) needs no ``scores.npy``;
- top-k ids are in range (``< n_train`` / ``< n_test``); top-k scores, self- and net influence and
  probabilities are finite; a sample of score rows is finite;
- ``samples.parquet`` is readable with one row per sample, indices ``0..n-1`` per split and labels
  (``label``, ``pred``, ``original_label``) inside the class list; the mislabel section likewise;
- checkpoint paths recorded in the manifest stay inside the run.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from cache_format import names as fmt
from cache_format.runs import CacheProblem, RunCache, build_command

#: score-matrix rows read per method (first, last and evenly spaced ones between)
SCORE_ROWS = 8
_LABEL_COLUMNS = ("label", "pred", "original_label")
_SAMPLE_COLUMNS = ("split", "index", "label", "pred", "confidence", "loss", "correct")
_MISLABEL_LABELS = ("label", "pred_label", "oof_label", "proponent_label", "suggested_label")


class _Damaged(Exception):
    def __init__(self, rel: str, why: str, kind: str = "damaged"):
        super().__init__(why)
        self.rel, self.why, self.kind = rel, why, kind


def safe_rel_path(run_dir: str | Path, rel: object) -> Path:
    """``run_dir / rel`` for a relative path that stays inside the run (no ``..``, no absolute path,
    no hidden or odd component, no symlink leading out); raises ``ValueError`` otherwise."""
    path = _rel_path(run_dir, rel)
    if os.path.lexists(path) and not path.resolve().is_relative_to(Path(run_dir).resolve()):
        raise ValueError(f"{rel!r} is a symbolic link leading outside the run")
    return path


def _rel_path(run_dir: str | Path, rel: object) -> Path:
    """``run_dir / rel`` if ``rel`` is written as a plain relative path of safe names."""
    parts = PurePosixPath(rel).parts if isinstance(rel, str) and rel and "\\" not in rel else ()
    if not parts or PurePosixPath(str(rel)).is_absolute() or not all(fmt.is_safe_name(p) for p in parts):
        raise ValueError(f"{rel!r}, which is not a relative path inside the run")
    return Path(run_dir).joinpath(*parts)


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` from a ``.npy`` file's header (the data is not read)."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        return tuple(int(s) for s in shape), np.dtype(dtype), fh.tell()


class _Checker:
    """One pass over a run; :meth:`run` raises :class:`_Damaged` at the first problem."""

    def __init__(self, run: RunCache, score_rows: int):
        self.run, self.score_rows = run, score_rows
        self.m = run.manifest
        ds = self.m["dataset"]
        self.n_train, self.n_test = run.n_train, run.n_test
        self.n_classes = len(ds["class_names"])
        listed = self.m.get("arrays")
        self.listed: dict[str, Any] = listed if isinstance(listed, dict) else {}
        self.seen: dict[str, tuple[int, ...]] = {}

    # --- files --------------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        try:
            path = _rel_path(self.run.path, rel)
        except ValueError as exc:
            raise _Damaged(fmt.MANIFEST, f"names {exc}") from None
        if os.path.lexists(path) and not path.resolve().is_relative_to(self.run.path.resolve()):
            raise _Damaged(rel, "is a symbolic link leading outside the run")
        if not path.is_file():
            raise _Damaged(rel, "is missing", "incomplete")
        return path

    def npy(self, rel: str, first: tuple[int | None, ...] = (), kind: str = "any") -> tuple[int, ...]:
        """Check one ``.npy`` file; ``first``: expected leading dims (``None`` = any); ``kind``:
        'int', 'float' or 'any' (numeric). Returns its shape."""
        if rel in self.seen:
            return self.seen[rel]
        path = self.path(rel)
        try:
            shape, dtype, offset = npy_header(path)
        except (ValueError, OSError, SyntaxError) as exc:
            raise _Damaged(rel, f"is not a readable .npy file ({exc})") from None
        if dtype.hasobject or dtype.kind not in "biuf":
            raise _Damaged(rel, f"holds {dtype} data, not numbers")
        if kind == "int" and dtype.kind not in "iu":
            raise _Damaged(rel, f"holds {dtype}, not integer ids")
        if kind == "float" and dtype.kind != "f":
            raise _Damaged(rel, f"holds {dtype}, not floating-point values")
        size = path.stat().st_size
        want = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size != want:
            raise _Damaged(rel, f"is {size:,} bytes, but its header ({list(shape)} {dtype}) needs {want:,} "
                           "(truncated or overwritten)")
        entry = self.listed.get(rel)
        if isinstance(entry, dict) and "shape" in entry:
            if list(entry.get("shape") or []) != list(shape) or str(entry.get("dtype", dtype)) != str(dtype):
                raise _Damaged(rel, f"has shape {list(shape)} {dtype}, but the manifest lists "
                               f"{entry.get('shape')} {entry.get('dtype')}")
        if len(shape) < len(first) or any(w is not None and s != w for s, w in zip(shape, first, strict=False)):
            raise _Damaged(rel, f"has shape {list(shape)}, expected leading sizes {list(first)} from the manifest")
        self.seen[rel] = shape
        return shape

    def load(self, rel: str) -> np.ndarray:
        return np.load(self.path(rel), mmap_mode="r", allow_pickle=False)

    def finite(self, rel: str, a: np.ndarray) -> None:
        if a.size and not np.isfinite(np.asarray(a, dtype=np.float64)).all():
            raise _Damaged(rel, "contains NaN or infinite values")

    def ids(self, rel: str, n: int, what: str) -> None:
        a = np.asarray(self.load(rel))
        if a.size and (a.min() < 0 or a.max() >= n):
            raise _Damaged(rel, f"holds {what} ids outside 0..{n - 1} (found {int(a.min())}..{int(a.max())})")

    def parquet(self, rel: str, rows: int, columns: tuple[str, ...]) -> pd.DataFrame:
        path = self.path(rel)
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a damaged file
            raise _Damaged(rel, f"is not a readable parquet file ({type(exc).__name__})") from None
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise _Damaged(rel, f"lacks the columns {missing}")
        if len(df) != rows:
            raise _Damaged(rel, f"has {len(df):,} rows, expected {rows:,}")
        for c in (*_LABEL_COLUMNS, *_MISLABEL_LABELS):
            if c in df.columns:
                v = pd.to_numeric(df[c], errors="coerce")
                if v.isna().any() or (v < 0).any() or (v >= self.n_classes).any() or (v != v.round()).any():
                    raise _Damaged(rel, f"column {c!r} holds labels outside 0..{self.n_classes - 1} "
                                   f"(the manifest lists {self.n_classes} class names)")
        return df

    # --- the run ------------------------------------------------------------------------------
    def structure(self) -> None:
        """Fields the pages read beyond what :func:`cache_format.runs.validate_manifest` checks."""
        ds = self.m["dataset"]
        names = ds["class_names"]
        if not all(isinstance(c, str | int) and not isinstance(c, bool) for c in names):
            raise _Damaged(fmt.MANIFEST, "lists class names that are not strings")
        n = ds.get("n_classes")
        if n is not None and n != len(names):
            raise _Damaged(fmt.MANIFEST, f"lists {len(names)} class names for {n!r} classes")
        if not self.m["methods"]:
            raise _Damaged(fmt.MANIFEST, "lists no influence methods")
        for key, value in self.m["methods"].items():
            if not isinstance(value, dict):
                raise _Damaged(fmt.MANIFEST, f"method {key!r} is not an object")
        mis = self.m.get(fmt.MISLABELS_KEY)
        if mis is not None and not isinstance(mis, dict):
            raise _Damaged(fmt.MANIFEST, "field 'mislabels' is not an object")
        det = (mis or {}).get("detection")
        if det is not None and not (isinstance(det, dict) and all(
                isinstance(d, dict) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in d.values())
                for d in det.values())):
            raise _Damaged(fmt.MANIFEST, "field 'mislabels.detection' does not hold numbers per method")

    def run_checks(self) -> None:
        self.structure()
        for rel in self.listed:
            self.path(rel)  # every listed file is inside the run and present
        self.samples()
        a, n_tr, n_te, n_all = fmt.ARRAYS_DIR, self.n_train, self.n_test, self.n_train + self.n_test
        for name, n in ((fmt.TRAIN_IMAGES, n_tr), (fmt.TEST_IMAGES, n_te)):
            shape = self.npy(f"{a}/{name}.npy", (n,))
            if len(shape) not in (3, 4):
                raise _Damaged(f"{a}/{name}.npy", f"has shape {list(shape)}, not [n, H, W] or [n, H, W, 3]")
        for name, n in ((fmt.TRAIN_PROBS, n_tr), (fmt.TEST_PROBS, n_te)):
            rel = f"{a}/{name}.npy"
            self.npy(rel, (n, self.n_classes), "float")
            self.finite(rel, self.load(rel))
        rel = f"{a}/{fmt.EMBEDDING}.npy"
        self.npy(rel, (n_all, 2), "float")
        self.finite(rel, self.load(rel))
        for method in self.m["methods"]:
            self.method(method)
        if self.m.get(fmt.MISLABELS_KEY):
            self.mislabels()
        for rel in self.listed:
            if rel.endswith(".npy"):
                self.npy(rel)
        self.checkpoints()

    def samples(self) -> None:
        rel = fmt.SAMPLES
        df = self.parquet(rel, self.n_train + self.n_test, _SAMPLE_COLUMNS)
        for split, n in (("train", self.n_train), ("test", self.n_test)):
            idx = pd.to_numeric(df.loc[df["split"] == split, "index"], errors="coerce")
            if len(idx) != n or not np.array_equal(np.sort(idx.to_numpy()), np.arange(n)):
                raise _Damaged(rel, f"does not hold {split} rows with indices 0..{n - 1} exactly")
        self.run.__dict__["samples"] = df  # RunCache.samples (a cached_property): read once

    def method(self, method: str) -> None:
        d = f"{fmt.METHODS_DIR}/{method}"
        n_tr, n_te = self.n_train, self.n_test
        dense = getattr(self.run, "has_dense_scores", lambda _m: True)(method)  # else top-k only
        if dense:
            scores = f"{d}/{fmt.SCORES}.npy"
            self.npy(scores, (n_te, n_tr), "float")
            full = self.load(scores)
            rows = np.unique(np.linspace(0, n_te - 1, min(self.score_rows, n_te)).round().astype(int)) if n_te else []
            for r in rows:
                self.finite(scores, full[int(r)])
        for ids, vals, n_rows, n_ids, what in (
                (fmt.TOP_PROPONENTS, fmt.TOP_PROPONENT_SCORES, n_te, n_tr, "training"),
                (fmt.TOP_OPPONENTS, fmt.TOP_OPPONENT_SCORES, n_te, n_tr, "training"),
                (fmt.TRAIN_TOP_HELPED, fmt.TRAIN_TOP_HELPED_SCORES, n_tr, n_te, "test"),
                (fmt.TRAIN_TOP_HURT, fmt.TRAIN_TOP_HURT_SCORES, n_tr, n_te, "test")):
            shape = self.npy(f"{d}/{ids}.npy", (n_rows, None), "int")
            self.npy(f"{d}/{vals}.npy", shape, "float")
            if len(shape) != 2 or shape[1] < 1:
                raise _Damaged(f"{d}/{ids}.npy", f"has shape {list(shape)}, not [{n_rows}, k] with k >= 1")
            self.ids(f"{d}/{ids}.npy", n_ids, what)
            self.finite(f"{d}/{vals}.npy", self.load(f"{d}/{vals}.npy"))
        for name in (fmt.SELF_INFLUENCE, fmt.TRAIN_NET_INFLUENCE):
            rel = f"{d}/{name}.npy"
            if self.npy(rel, (n_tr,), "float") != (n_tr,):
                raise _Damaged(rel, f"has shape {list(self.seen[rel])}, expected [{n_tr}]")
            self.finite(rel, self.load(rel))

    def mislabels(self) -> None:
        n = self.n_train
        df = self.parquet(fmt.MISLABEL_SCORES, n, ("index", "label", "suggested_label"))
        if not np.array_equal(np.sort(pd.to_numeric(df["index"], errors="coerce").to_numpy()), np.arange(n)):
            raise _Damaged(fmt.MISLABEL_SCORES, f"does not hold training indices 0..{n - 1} exactly")
        info = self.m[fmt.MISLABELS_KEY]
        methods = info.get("methods") if isinstance(info, dict) else None
        if not isinstance(methods, list) or not methods or not all(isinstance(x, str) and x in df.columns
                                                                   for x in methods):
            raise _Damaged(fmt.MISLABEL_SCORES, "lacks a ranking column the manifest's 'mislabels.methods' lists")
        for ids, vals in ((fmt.PROPONENTS, fmt.PROPONENT_SCORES), (fmt.OPPONENTS, fmt.OPPONENT_SCORES)):
            shape = self.npy(ids, (n, None), "int")
            self.npy(vals, shape, "float")
            self.ids(ids, n, "training")
            self.finite(vals, self.load(vals))

    def checkpoints(self) -> None:
        cks = (self.m.get("model") or {}).get("checkpoints") or []
        for ck in cks if isinstance(cks, list) else []:
            rel = ck.get("path") if isinstance(ck, dict) else ck
            try:
                safe_rel_path(self.run.path, rel)
            except ValueError as exc:
                raise _Damaged(fmt.MANIFEST, f"names a checkpoint {exc}") from None


def check_run(run: RunCache, score_rows: int = SCORE_ROWS) -> RunCache:
    """Check an opened run's files against its manifest; returns ``run`` or raises :class:`CacheProblem`.

    The message names the file relative to the cache folder (``<run>/<file>``: no server path) and
    the command that rebuilds the run. ``run.samples`` is filled as a side effect (read once).
    """
    try:
        _Checker(run, score_rows).run_checks()
    except _Damaged as exc:
        name = run.path.name
        raise CacheProblem(exc.kind, run.path, f"this run is damaged: {name}/{exc.rel} {exc.why}. "
                           f"Rebuild it with: {build_command(name)} --overwrite") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        name = run.path.name
        raise CacheProblem("damaged", run.path, f"this run is damaged: {name} cannot be read "
                           f"({type(exc).__name__}). Rebuild it with: {build_command(name)} --overwrite") from None
    return run


def open_checked(run_dir: str | Path, score_rows: int = SCORE_ROWS) -> RunCache:
    """:class:`RunCache` of ``run_dir`` after :func:`check_run`; raises :class:`CacheProblem`."""
    return check_run(RunCache(run_dir), score_rows)
