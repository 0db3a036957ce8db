"""Atomic cache writing: everything goes to a hidden temporary directory beside the run, the
manifest is written last, and the directory is renamed into place only when complete."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cache_format.atomic import (
    atomic_write_json,
    recover_swap,
    remove_dead_partials,
    replace_dir,
    write_owner,
)
from cache_format.names import (
    ARRAYS_DIR,
    EVALUATION_DIR,
    FORMAT_VERSION,
    GROUNDTRUTH_DIR,
    MANIFEST,
    METHODS_DIR,
    SIGN_CONVENTION,
)
from precompute.errors import CacheError


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


def read_run_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The manifest of ``run_dir`` if it is a run (a ``manifest.json`` holding a JSON object with a
    ``format_version`` or ``config``), else None."""
    try:
        m = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and ("format_version" in m or "config" in m) else None


def _not_a_run(run_dir: Path) -> CacheError:
    return CacheError(f"{run_dir} exists and is not a run (no valid {MANIFEST}); precompute only ever replaces a "
                      "run folder: choose another --out or --name, or move that folder away yourself")


def existing_run_status(run_dir: Path, identity: dict[str, Any], overwrite: bool = False) -> str:
    """``absent`` (nothing there, or an empty folder), ``same`` (a run made with this config),
    ``replace`` (a run, and ``overwrite``); raise CacheError for a folder that is not a run (never
    replaced, even with ``overwrite``) or a run made with another config (without ``overwrite``).

    First finishes a swap into ``run_dir`` that a killed precompute left half done, and removes the
    partial folders of dead precompute processes of this run.
    """
    run_dir = Path(run_dir)
    recover_swap(run_dir)
    remove_dead_partials(run_dir.parent, run_dir.name)
    if not run_dir.exists() and not run_dir.is_symlink():
        return "absent"
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise CacheError(f"{run_dir} exists and is not a run folder; choose another --out or --name")
    if not any(run_dir.iterdir()):
        return "absent"
    manifest = read_run_manifest(run_dir)
    if manifest is None:
        raise _not_a_run(run_dir)
    if overwrite:
        return "replace"
    old = manifest.get("config")
    diffs = config_differences(old if isinstance(old, dict) else {}, identity)
    if diffs:
        shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise CacheError(f"{run_dir} was made with a different config ({shown}); pass --overwrite to replace it "
                         "or --name to write a new run")
    return "same"


def check_same_data(run_dir: Path, fingerprint: str) -> None:
    """Raise CacheError if the run at ``run_dir`` was built from other data than ``fingerprint``."""
    recorded = ((read_run_manifest(Path(run_dir)) or {}).get("dataset") or {}).get("fingerprint")
    if recorded != fingerprint:
        raise CacheError(f"{run_dir} was built from different data (dataset fingerprint {recorded} -> {fingerprint}): "
                         "the data changed since; pass --overwrite to rebuild it or --name to write a new run")


class CacheWriter:
    """Collects a run's files in ``<cache-dir>/.<run>.partial-<pid>`` and moves them into place.

    Use as a context manager: on any exception the partial directory is removed, so a reader never
    sees a half-written run. Every array written is recorded (path, shape, dtype) in the manifest.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.tmp = self.run_dir.parent / f".{self.run_dir.name}.partial-{os.getpid()}"
        self.arrays: dict[str, dict[str, Any]] = {}
        try:
            self.run_dir.parent.mkdir(parents=True, exist_ok=True)
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
            self.tmp.mkdir()
            write_owner(self.tmp)  # lets a later run remove this folder if this process dies
        except OSError as exc:
            raise CacheError(f"cannot write to cache folder {self.run_dir.parent} ({exc.strerror or exc}); "
                             "pass --cache-dir (or --out) with a writable folder") from None

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _record(self, rel: str, arr: np.ndarray) -> None:
        self.arrays[rel] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}

    def save_array(self, name: str, arr: np.ndarray, method: str | None = None) -> str:
        """Save ``arr`` as ``arrays/<name>.npy`` (or ``methods/<method>/<name>.npy``); returns the path."""
        rel = f"{METHODS_DIR}/{method}/{name}.npy" if method else f"{ARRAYS_DIR}/{name}.npy"
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = np.ascontiguousarray(arr)
        np.save(path, arr)
        self._record(rel, arr)
        return rel

    def open_array(self, name: str, shape: tuple[int, ...], dtype: Any, method: str | None = None) -> np.memmap:
        """A writable ``.npy`` memmap to fill in chunks (score matrices too big for memory)."""
        rel = f"{METHODS_DIR}/{method}/{name}.npy" if method else f"{ARRAYS_DIR}/{name}.npy"
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self.arrays[rel] = {"shape": list(shape), "dtype": str(np.dtype(dtype))}
        return mm

    def save_parquet(self, rel: str, df: pd.DataFrame) -> None:
        df.to_parquet(self.tmp / rel, index=False)
        self.arrays[rel] = {"rows": len(df), "columns": list(df.columns)}

    def path(self, rel: str) -> Path:
        """A path inside the partial run for other files (checkpoints); parent folders created."""
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def finalize(self, manifest: dict[str, Any]) -> Path:
        """Write the manifest last, then swap the complete run into place, replacing an old *run*
        (never a folder that is not one) and carrying over its ground truth (``carry`` below)."""
        manifest = {"format_version": FORMAT_VERSION, "sign_convention": SIGN_CONVENTION, **manifest,
                    "arrays": self.arrays, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(self.tmp / MANIFEST, manifest, default=_json_default)
        if self.run_dir.is_dir() and any(self.run_dir.iterdir()) and read_run_manifest(self.run_dir) is None:
            raise _not_a_run(self.run_dir)  # appeared while this run was computed
        # the replaced run's retrained-model ground truth (evaluation/groundtruth) is expensive and keyed
        # by model and data fingerprints and training recipe (entries that no longer match are not used);
        # its results.json is not kept: it scored the old run
        return replace_dir(self.tmp, self.run_dir, carry=[f"{EVALUATION_DIR}/{GROUNDTRUTH_DIR}"])


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
