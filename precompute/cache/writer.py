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

from cache_format.atomic import atomic_write_json, replace_dir
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


def existing_run_status(run_dir: Path, identity: dict[str, Any]) -> str:
    """'absent', 'same' (a complete run made with this config) or raise CacheError if it differs."""
    if not run_dir.exists():
        return "absent"
    manifest_path = run_dir / MANIFEST
    if not manifest_path.is_file():
        raise CacheError(f"{run_dir} exists but is not a complete run (no {MANIFEST}); "
                         "remove it or pass --overwrite to replace it")
    try:
        old = json.loads(manifest_path.read_text()).get("config", {})
    except json.JSONDecodeError:
        raise CacheError(f"{manifest_path} is corrupt; pass --overwrite to rebuild the run") from None
    diffs = config_differences(old, identity)
    if diffs:
        shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise CacheError(f"{run_dir} was made with a different config ({shown}); pass --overwrite to replace it "
                         "or --name to write a new run")
    return "same"


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
            probe = self.tmp / ".write-test"
            probe.write_bytes(b"ok")
            probe.unlink()
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
        """Write the manifest last, then swap the complete run into place (replacing an old one)."""
        manifest = {"format_version": FORMAT_VERSION, "sign_convention": SIGN_CONVENTION, **manifest,
                    "arrays": self.arrays, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(self.tmp / MANIFEST, manifest, default=_json_default)
        return replace_dir(self.tmp, self.run_dir, before_swap=lambda _old: self._carry_groundtruth())


    def _carry_groundtruth(self) -> None:
        """Keep the replaced run's retrained-model ground truth (``evaluation/groundtruth``), which is
        expensive and keyed by model and data fingerprints and training recipe, so entries that no
        longer match are simply not used. Its ``results.json`` is not kept: it scored the old run."""
        src = self.run_dir / EVALUATION_DIR / GROUNDTRUTH_DIR
        if src.is_dir():
            dst = self.tmp / EVALUATION_DIR / GROUNDTRUTH_DIR
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
