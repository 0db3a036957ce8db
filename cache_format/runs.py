"""Finding, validating and reading runs: numpy, pandas and json only (no torch).

The names of every file are in :mod:`cache_format.names`; a run is a direct child of the cache
folder, chosen by name only (:func:`run_dir`), and its manifest is checked before anything is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cache_format.names import (
    ARRAYS_DIR,
    MANIFEST,
    METHODS_DIR,
    READABLE_VERSIONS,
    SAMPLES,
    SCORES,
    is_safe_name,
)


def build_command(run: str) -> str:
    """The exact command that (re)builds a run's cache."""
    if run in ("digits", "digits-noisy"):
        return f"influence-explorer precompute --sample {run}"
    return f"influence-explorer precompute --config <your-config.toml> --name {run}"


class CacheProblem(Exception):
    """A run directory that cannot be read; ``kind`` is 'missing', 'incomplete', 'version', 'damaged'
    or 'invalid' (a name that is not a run name)."""

    def __init__(self, kind: str, path: Path, message: str):
        super().__init__(message)
        self.kind, self.path, self.message = kind, path, message


@dataclass(frozen=True)
class RunSummary:
    """One line of the run picker."""

    name: str
    path: Path
    ok: bool
    problem: str | None = None
    dataset: str = ""
    model: str = ""
    test_accuracy: float | None = None
    methods: tuple[str, ...] = ()
    n_train: int = 0
    n_test: int = 0


def run_dir(cache_dir: str | Path, name: str) -> Path:
    """The folder of run ``name``: a direct child of ``cache_dir``, by name only.

    Raises :class:`CacheProblem` ("invalid") for anything that is not a plain folder name (absolute
    paths, ``..``, separators, hidden names), so a URL or a manifest can never point outside the cache.
    """
    if not is_safe_name(name):
        raise CacheProblem("invalid", Path(cache_dir), f"{name!r} is not a run name (letters, digits, '-', '_' "
                           "and '.' only, not starting with '.'); pick a run from the Runs page")
    return Path(cache_dir) / name


def validate_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """Check the fields every reader relies on; returns the manifest or raises :class:`CacheProblem`."""
    def bad(field: str, why: str) -> CacheProblem:
        return CacheProblem("damaged", path.parent, f"{path}: field {field!r} {why}. Rebuild it with: "
                            f"{build_command(path.parent.name)} --overwrite")

    if not isinstance(manifest, dict):
        raise bad("(top level)", "is not a JSON object")
    ds = manifest.get("dataset")
    if not isinstance(ds, dict):
        raise bad("dataset", "is missing or not an object")
    for key in ("n_train", "n_test"):
        if not isinstance(ds.get(key), int) or isinstance(ds.get(key), bool) or ds[key] < 0:
            raise bad(f"dataset.{key}", "is missing or not an integer >= 0")
    names = ds.get("class_names")
    if not isinstance(names, list) or not names:
        raise bad("dataset.class_names", "is missing or empty")
    if not isinstance(manifest.get("model"), dict):
        raise bad("model", "is missing or not an object")
    methods = manifest.get("methods")
    if not isinstance(methods, dict):
        raise bad("methods", "is missing or not an object")
    for m in methods:
        if not is_safe_name(m):
            raise bad("methods", f"names {m!r}, which is not a method name")
    if not is_safe_name(manifest.get("name")):
        raise bad("name", "is missing or not a run name")
    return manifest


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Load and check a run's manifest; raises :class:`CacheProblem` with a user-facing message."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if not run_dir.is_dir():
        raise CacheProblem("missing", run_dir, f"no run at {run_dir}. Build it with: {build_command(run_dir.name)}")
    if not path.is_file():
        raise CacheProblem("incomplete", run_dir, f"{run_dir} has no {MANIFEST} (an interrupted or foreign run). "
                           f"Rebuild it with: {build_command(run_dir.name)} --overwrite")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CacheProblem("incomplete", run_dir, f"{path} is unreadable ({exc}). "
                           f"Rebuild it with: {build_command(run_dir.name)} --overwrite") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version not in READABLE_VERSIONS:
        raise CacheProblem("version", run_dir, f"{path} has cache format version {version!r}; this explorer reads "
                           f"versions {', '.join(map(str, READABLE_VERSIONS))}. Rebuild it with: {build_command(run_dir.name)} --overwrite")
    return validate_manifest(manifest, path)


def list_runs(cache_dir: str | Path) -> list[RunSummary]:
    """Every run directory under ``cache_dir`` (hidden/partial ones excluded), readable or not."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            m = read_manifest(d)
        except CacheProblem as exc:
            out.append(RunSummary(name=d.name, path=d, ok=False, problem=exc.message))
            continue
        out.append(RunSummary(
            name=d.name, path=d, ok=True, dataset=str(m["dataset"].get("name", "")), model=str(m["model"].get("arch", "")),
            test_accuracy=m["model"].get("test_accuracy"), methods=tuple(m["methods"]),
            n_train=m["dataset"]["n_train"], n_test=m["dataset"]["n_test"],
        ))
    return out


class RunCache:
    """Read access to one run. Arrays are memory-mapped: only the rows you index are read."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir)
        self.manifest = read_manifest(self.path)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def methods(self) -> list[str]:
        return list(self.manifest["methods"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["dataset"]["class_names"])

    @property
    def n_train(self) -> int:
        return int(self.manifest["dataset"]["n_train"])

    @property
    def n_test(self) -> int:
        return int(self.manifest["dataset"]["n_test"])

    @cached_property
    def samples(self) -> pd.DataFrame:
        """One row per sample: split, index (within split), label, pred, confidence, loss, ..."""
        return pd.read_parquet(self.path / SAMPLES)

    def train_samples(self) -> pd.DataFrame:
        return self.samples[self.samples["split"] == "train"].set_index("index", drop=False)

    def test_samples(self) -> pd.DataFrame:
        return self.samples[self.samples["split"] == "test"].set_index("index", drop=False)

    def array(self, name: str) -> np.ndarray:
        """A run-level array (``arrays/<name>.npy``), memory-mapped read-only."""
        return self.load_npy(Path(ARRAYS_DIR) / f"{name}.npy")

    def method_array(self, method: str, name: str) -> np.ndarray:
        """A per-method array (``methods/<method>/<name>.npy``), memory-mapped read-only."""
        if method not in self.manifest["methods"]:
            raise KeyError(f"method {method!r} is not in run {self.name}; it has {self.methods}")
        return self.load_npy(Path(METHODS_DIR) / method / f"{name}.npy")

    def has_dense_scores(self, method: str) -> bool:
        """Whether the full score matrix of ``method`` is stored (else only its top-k arrays)."""
        info = self.manifest["methods"].get(method)
        return not (isinstance(info, dict) and info.get("scores") == "topk")

    def scores(self, method: str) -> np.ndarray:
        """``[n_test, n_train]`` float32 memmap; positive = proponent. Raises :class:`CacheProblem`
        ("topk") when the run kept only the top-k of this method (``influence.store_scores``)."""
        if not self.has_dense_scores(method):
            raise CacheProblem("topk", self.path, f"run {self.name} stores only the top-k scores of {method} "
                               f"(influence.store_scores = \"topk\"); rebuild with store_scores = \"dense\" "
                               "for full rows")
        return self.method_array(method, SCORES)

    def require_file(self, rel: str | Path) -> Path:
        """``<run>/<rel>``, which must exist; else :class:`CacheProblem` naming it and the rebuild command."""
        path = self.path / rel
        if not path.is_file():
            raise CacheProblem("incomplete", self.path, f"{path} is missing. Rebuild with: "
                               f"{build_command(self.name)} --overwrite")
        return path

    def load_npy(self, rel: str | Path) -> np.ndarray:
        """``<run>/<rel>`` (a ``.npy`` file), memory-mapped read-only (never unpickled)."""
        return np.load(self.require_file(rel), mmap_mode="r", allow_pickle=False)
