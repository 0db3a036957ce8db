"""The on-disk cache contract and its reader: numpy, pandas and json only (no torch).

One directory per run (see docs/cache-format.md)::

    <cache-dir>/<run>/manifest.json             written last: its presence marks a complete run
    <cache-dir>/<run>/samples.parquet           one row per sample (train rows first, then test)
    <cache-dir>/<run>/arrays/<name>.npy          images, probabilities, features, embedding
    <cache-dir>/<run>/methods/<method>/<name>.npy  scores [n_test, n_train], top-k, self-influence

precompute's writer imports the names below, so writer and reader cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SAMPLES = "samples.parquet"
ARRAYS_DIR = "arrays"
METHODS_DIR = "methods"
SIGN_CONVENTION = "positive score = proponent: up-weighting the training sample lowers the test loss"

# arrays/<name>.npy
TRAIN_IMAGES, TEST_IMAGES = "train_images", "test_images"  # uint8 [n, H, W] or [n, H, W, 3]
TRAIN_PROBS, TEST_PROBS = "train_probs", "test_probs"  # float32 [n, n_classes]
TRAIN_FEATURES, TEST_FEATURES = "train_features", "test_features"  # float32 [n, d] penultimate layer
EMBEDDING = "embedding"  # float32 [n_train + n_test, 2] UMAP, train rows first

# methods/<method>/<name>.npy
SCORES = "scores"  # float32 [n_test, n_train]
TOP_PROPONENTS, TOP_PROPONENT_SCORES = "top_proponents", "top_proponent_scores"  # [n_test, k] best first
TOP_OPPONENTS, TOP_OPPONENT_SCORES = "top_opponents", "top_opponent_scores"  # [n_test, k] most negative first
SELF_INFLUENCE = "self_influence"  # float32 [n_train]
TRAIN_NET_INFLUENCE = "train_net_influence"  # float32 [n_train] mean score over the test set
TRAIN_TOP_HELPED, TRAIN_TOP_HELPED_SCORES = "train_top_helped", "train_top_helped_scores"  # [n_train, k] test ids
TRAIN_TOP_HURT, TRAIN_TOP_HURT_SCORES = "train_top_hurt", "train_top_hurt_scores"  # [n_train, k] test ids


def build_command(run: str) -> str:
    """The exact command that (re)builds a run's cache."""
    if run in ("digits", "digits-noisy"):
        return f"influence-explorer precompute --sample {run}"
    return f"influence-explorer precompute --config <your-config.toml> --name {run}"


class CacheProblem(Exception):
    """A run directory that cannot be read; ``kind`` is 'missing', 'incomplete' or 'version'."""

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
    except (OSError, json.JSONDecodeError) as exc:
        raise CacheProblem("incomplete", run_dir, f"{path} is unreadable ({exc}). "
                           f"Rebuild it with: {build_command(run_dir.name)} --overwrite") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CacheProblem("version", run_dir, f"{path} has cache format version {version!r}; this explorer reads "
                           f"version {FORMAT_VERSION}. Rebuild it with: {build_command(run_dir.name)} --overwrite")
    return manifest


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
            name=d.name, path=d, ok=True, dataset=m["dataset"]["name"], model=m["model"]["arch"],
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
        return self._load(Path(ARRAYS_DIR) / f"{name}.npy")

    def method_array(self, method: str, name: str) -> np.ndarray:
        """A per-method array (``methods/<method>/<name>.npy``), memory-mapped read-only."""
        if method not in self.manifest["methods"]:
            raise KeyError(f"method {method!r} is not in run {self.name}; it has {self.methods}")
        return self._load(Path(METHODS_DIR) / method / f"{name}.npy")

    def scores(self, method: str) -> np.ndarray:
        """``[n_test, n_train]`` float32 memmap; positive = proponent."""
        return self.method_array(method, SCORES)

    def _load(self, rel: Path) -> np.ndarray:
        path = self.path / rel
        if not path.is_file():
            raise CacheProblem("incomplete", self.path, f"{path} is missing. Rebuild with: "
                               f"{build_command(self.name)} --overwrite")
        return np.load(path, mmap_mode="r")
