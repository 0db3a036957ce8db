"""Evaluation results and retraining ground truth inside the run folder, written atomically.

Layout (see docs/evaluation.md)::

    <run>/evaluation/results.json                 written last (temp file + os.replace)
    <run>/evaluation/groundtruth/<kind>-<key>/     one folder per ground truth, swapped in whole
        meta.json, masks.npy [S, n_train] bool, test_loss.npy [S, R, n_test], margin.npy, pred.npy ...

``<key>`` hashes the settings that determine the retrained models *and* the run's model/dataset
fingerprints and training recipe, so ground truth from another model or recipe is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from cache_format.atomic import atomic_write_json, pid_alive, replace_dir
from cache_format.names import EVALUATION_DIR, GROUNDTRUTH_DIR, RESULTS, RESULTS_FORMAT
from precompute.errors import CacheError

GROUNDTRUTH_VERSION = 1


def settings_key(payload: dict[str, Any]) -> str:
    blob = json.dumps({"v": GROUNDTRUTH_VERSION, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class EvaluationStore:
    """Reads and writes ``<run>/evaluation``; never leaves a half-written file or folder behind."""

    def __init__(self, run_dir: str | Path, model_fingerprint: str, dataset_fingerprint: str):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / EVALUATION_DIR
        self.model_fingerprint = model_fingerprint
        self.dataset_fingerprint = dataset_fingerprint
        try:
            (self.root / GROUNDTRUTH_DIR).mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise CacheError(f"cannot write evaluation results to {self.root} ({exc.strerror or exc}); "
                             "make the run folder writable") from None
        self._clean_partials()

    def _clean_partials(self) -> None:
        """Remove temp files/folders left by a killed evaluate (never read by anyone)."""
        for p in list(self.root.glob(".*.tmp-*")) + list((self.root / GROUNDTRUTH_DIR).glob(".*.tmp-*")):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and pid_alive(int(pid), socket.gethostname()) and int(pid) != os.getpid():
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    # ------------------------------------------------------------------ ground truth
    def groundtruth_dir(self, kind: str, key: str) -> Path:
        return self.root / GROUNDTRUTH_DIR / f"{kind}-{key}"

    def load_groundtruth(self, kind: str, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """(meta, arrays) of a complete ground truth with this key, or None."""
        d = self.groundtruth_dir(kind, key)
        meta_path = d / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            arrays = {name: np.load(d / f"{name}.npy") for name in meta["arrays"]}
        except (OSError, ValueError, KeyError):
            return None  # unreadable: treated as absent and recomputed
        if meta.get("key") != key or meta.get("model_fingerprint") != self.model_fingerprint:
            return None
        return meta, arrays

    def save_groundtruth(self, kind: str, key: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
        """Write arrays then meta.json into a temp folder and swap it in place of any older one."""
        final = self.groundtruth_dir(kind, key)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for name, arr in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr))
            meta = {**meta, "key": key, "kind": kind, "model_fingerprint": self.model_fingerprint,
                    "dataset_fingerprint": self.dataset_fingerprint, "arrays": sorted(arrays),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=_json_default))
            replace_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def prune_groundtruth(self, kind: str, keep_key: str) -> None:
        """Drop ground truth of ``kind`` made for another model/dataset (stale: never reusable)."""
        for d in (self.root / GROUNDTRUTH_DIR).glob(f"{kind}-*"):
            meta = d / "meta.json"
            try:
                m = json.loads(meta.read_text())
            except (OSError, ValueError):
                m = {}
            stale = m.get("model_fingerprint") != self.model_fingerprint or \
                m.get("dataset_fingerprint") != self.dataset_fingerprint
            if d.name != f"{kind}-{keep_key}" and stale:
                shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------------ results
    def load_results(self) -> dict[str, Any]:
        """Earlier results for this very model and data, or an empty skeleton."""
        path = self.root / RESULTS
        fresh = {"format": RESULTS_FORMAT, "model_fingerprint": self.model_fingerprint,
                 "dataset_fingerprint": self.dataset_fingerprint}
        if not path.is_file():
            return fresh
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            return fresh
        if old.get("format") != RESULTS_FORMAT or old.get("model_fingerprint") != self.model_fingerprint or \
                old.get("dataset_fingerprint") != self.dataset_fingerprint:
            return fresh
        return old

    def save_results(self, results: dict[str, Any]) -> Path:
        results = {**results, "format": RESULTS_FORMAT, "model_fingerprint": self.model_fingerprint,
                   "dataset_fingerprint": self.dataset_fingerprint,
                   "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        return atomic_write_json(self.root / RESULTS, finite(results), default=_json_default, allow_nan=False)


def finite(obj: Any) -> Any:
    """A copy with NaN/inf floats replaced by None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite(obj.tolist())
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    return obj

