"""``.npz`` archives and folders of ``.npy`` files, read by memory map and validated in chunks.

``data.path`` is either a folder holding ``X_train.npy, y_train.npy, X_test.npy, y_test.npy`` (and
optionally ``class_names.npy``), each memory-mapped with ``np.load(mmap_mode="r")``, or an ``.npz``
with the same keys. An uncompressed ``.npz`` (``np.savez``) is memory-mapped in place: its members
are stored, not deflated, so each ``X_*`` array is mapped at its offset inside the zip file. The
members of a compressed one (``np.savez_compressed``) are extracted once, streamed, into a hidden
folder beside it (``.<name>.npz-mmap/``; reused while the archive's size and time are unchanged).
Only labels (``[n]`` integers) are read into memory; inputs are read a chunk at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from precompute.data.dataset import SplitDataset
from precompute.data.display import ScaledDisplay
from precompute.data.source import ArraySource
from precompute.data.tabular import _finish, check_labels, encode_labels
from precompute.errors import DataError

NEED = ("X_train", "y_train", "X_test", "y_test")


def _member_source(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> ArraySource:
    """An uncompressed ``.npz`` member mapped where its bytes lie in the archive."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise DataError(f"{path}: member {info.filename} has a broken zip header; re-save it with np.savez")
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        shape, fortran, dtype = read(fh) if read else np.lib.format._read_array_header(fh, version)
        offset = fh.tell()
    if dtype.hasobject:
        raise DataError(f"{path}: {info.filename} holds Python objects; save numeric arrays")
    return ArraySource(path=str(path), offset=offset, dtype=dtype, shape=shape, fortran_order=fortran)


def _extract(path: Path, zf: zipfile.ZipFile, key: str) -> Path:
    """Stream a compressed member to ``.<name>.npz-mmap/<key>.npy`` beside the archive (once)."""
    folder = path.parent / f".{path.name}-mmap"
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    out, record = folder / f"{key}.npy", folder / f"{key}.json"
    if out.is_file() and record.is_file() and json.loads(record.read_text()) == stamp:
        return out
    try:
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{key}.npy.partial-{os.getpid()}"
        with zf.open(f"{key}.npy") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        os.replace(tmp, out)
        record.write_text(json.dumps(stamp))
    except OSError as exc:
        raise DataError(f"{path}: a compressed .npz cannot be memory-mapped and extracting it to {folder} failed "
                        f"({exc.strerror or exc}); save it with np.savez (uncompressed) or pass a folder of .npy "
                        "files as data.path") from None
    return out


def open_arrays(path: str | Path) -> tuple[dict[str, ArraySource], dict[str, np.ndarray]]:
    """``({"X_train", "X_test"}: memory-mapped sources, {"y_train", "y_test", ["class_names"]}: arrays)``."""
    p = Path(path)
    if p.is_dir():
        files = {k: p / f"{k}.npy" for k in (*NEED, "class_names")}
        if missing := [k for k in NEED if not files[k].is_file()]:
            raise DataError(f"{p}: missing {[f'{k}.npy' for k in missing]}; the folder must hold "
                            f"{[f'{k}.npy' for k in NEED]} (and optionally class_names.npy)")
        try:
            xs = {k: ArraySource.from_npy(str(files[k])) for k in ("X_train", "X_test")}
            small = {k: np.load(files[k], allow_pickle=False) for k in ("y_train", "y_test", "class_names")
                     if files[k].is_file()}
        except (ValueError, OSError) as exc:
            raise DataError(f"{p}: cannot read the .npy files ({type(exc).__name__}: {exc}); save them with "
                            "np.save") from None
        return xs, small
    if not p.is_file():
        raise DataError(f"{p}: .npz file not found; set data.path")
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{p}: cannot read .npz ({type(exc).__name__}); save it with np.savez") from None
    with zf:
        members = {n[:-4]: zf.getinfo(n) for n in zf.namelist() if n.endswith(".npy")}
        if missing := [k for k in NEED if k not in members]:
            raise DataError(f"{p}: missing arrays {missing}; it must hold {list(NEED)} (and optionally class_names)")
        try:
            xs = {k: (_member_source(p, zf, members[k]) if members[k].compress_type == zipfile.ZIP_STORED
                      else ArraySource.from_npy(str(_extract(p, zf, k)))) for k in ("X_train", "X_test")}
            small = {}
            for k in ("y_train", "y_test", "class_names"):
                if k in members:
                    with zf.open(members[k]) as fh:
                        small[k] = np.lib.format.read_array(fh, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{p}: cannot read .npz ({type(exc).__name__}: {exc}); save it with np.savez") from None
    return xs, small


def _scan(src: ArraySource, where: str, per_feature: bool) -> tuple[np.ndarray | float, np.ndarray | float]:
    """One chunked pass: refuse NaN/inf (the in-memory message), return ``(lo, hi)``: per feature or global."""
    lo = hi = None
    bad_rows, bad_col = 0, None
    for s, e in src.chunks():
        a = src.read_raw(s, e).reshape(e - s, -1)
        bad = ~np.isfinite(a)
        if bad.any():
            bad_rows += int(bad.any(1).sum())
            col = int(np.flatnonzero(bad.any(0))[0])
            bad_col = col if bad_col is None else min(bad_col, col)
            continue
        cl, ch = (a.min(0), a.max(0)) if per_feature else (a.min(), a.max())
        lo = cl if lo is None else np.minimum(lo, cl)
        hi = ch if hi is None else np.maximum(hi, ch)
    if bad_rows:
        raise DataError(f"{where}: {bad_rows} rows have NaN/inf features (first in 'feature {bad_col}'); "
                        "drop or impute them before precompute")
    if lo is None:
        lo = hi = np.zeros(int(np.prod(src.sample_shape))) if per_feature else 0.0
    return lo, hi


def streamed_dataset(name: str, x_train: ArraySource, y_train: np.ndarray, x_test: ArraySource, y_test: np.ndarray,
                     class_names: list[str] | None, where: str):
    """Validate memory-mapped inputs chunk by chunk (the checks and messages of ``arrays_to_dataset``)
    and wrap them as a :class:`SplitDataset` whose ``x_*`` and ``images_*`` are read lazily."""
    shp_tr, shp_te = x_train.raw_shape, x_test.raw_shape
    if shp_tr[1:] != shp_te[1:]:
        raise DataError(f"{where}: X_train samples have shape {shp_tr[1:]} but X_test {shp_te[1:]}; make them equal")
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    for key, shp, lab in (("X_train", shp_tr, y_train), ("X_test", shp_te, y_test)):
        if shp[0] != len(lab):
            raise DataError(f"{where}: {key} has {shp[0]} rows but its labels have {len(lab)}; make them equal")
    ndim = len(shp_tr)
    if ndim not in (2, 3, 4):
        raise DataError(f"{where}: X_train has {ndim} dimensions; use [n, d] features or [n, (C,) H, W] images")
    if ndim == 4 and shp_tr[1] not in (1, 3):
        raise DataError(f"{where}: X_train has shape {shp_tr}; images must be [n, H, W] or [n, C, H, W] with C 1 or 3")
    for key, src in (("X_train", x_train), ("X_test", x_test)):
        if not (np.issubdtype(src.raw_dtype, np.number) or src.raw_dtype == np.dtype(bool)):
            raise DataError(f"{where}: {key} has dtype {src.raw_dtype}; save numeric arrays")
    lo, hi = _scan(x_train, f"{where} X_train", per_feature=ndim == 2)
    _scan(x_test, f"{where} X_test", per_feature=ndim == 2)
    y_all, names = encode_labels(np.concatenate([y_train, y_test]), class_names, f"{where} y_train/y_test")
    y_tr, y_te = y_all[:len(y_train)], y_all[len(y_train):]
    check_labels(y_tr, y_te, names, where)
    if ndim == 3:
        x_train.add_channel = x_test.add_channel = True
        x_train.sample_shape, x_test.sample_shape = (1, *shp_tr[1:]), (1, *shp_te[1:])
    strips = ndim == 2
    img_tr, img_te = ScaledDisplay(x_train, lo, hi, strips), ScaledDisplay(x_test, lo, hi, strips)
    return _finish(name, x_train, y_tr, x_test, y_te, img_tr, img_te, names, np.arange(len(y_tr)),
                   np.arange(len(y_te)), {"streamed": True})


def load_npz(path: str | Path, class_names: list[str] | None = None) -> SplitDataset:
    """``.npz`` with ``X_train, y_train, X_test, y_test`` (optional ``class_names``), or a folder of
    those as ``.npy`` files: inputs memory-mapped and read in chunks (see :mod:`precompute.data.npy`).

    ``X`` of shape ``[n, d]`` is a feature table; ``[n, H, W]`` / ``[n, C, H, W]`` images (C = 1 or 3).
    """
    p = Path(path)
    xs, small = open_arrays(p)
    names = class_names or ([str(c) for c in small["class_names"]] if "class_names" in small else None)
    ds = streamed_dataset(p.stem if p.is_file() else p.name, xs["X_train"], small["y_train"], xs["X_test"],
                          small["y_test"], names, str(p))
    ds.extra["source_path"] = str(p)
    return ds
