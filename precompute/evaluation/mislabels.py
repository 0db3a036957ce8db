"""Mislabel-detection metrics for runs with injected label noise (shared with the mislabels stage).

The mislabels stage of precompute already stores ROC-AUC and found@k per ranking method in the
manifest (``manifest["mislabels"]["detection"]``, see :mod:`cache_format.mislabels`); evaluation reuses
those numbers and computes nothing. Only for runs built without that stage does it score the
self-influence ranking of each method with the same metric functions (:func:`cache_format.mislabels.detection_report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cache_format.evaluation import read_mislabel_metrics
from cache_format.names import SELF_INFLUENCE
from cache_format.runs import RunCache


def mislabel_metrics(run_dir: str | Path, methods: list[str]) -> dict[str, Any] | None:
    """``{"source", "methods": {method: {"roc_auc", "found@10%", ...}}, "other": {...}}`` or None
    when the run has no injected label noise."""
    cache = RunCache(run_dir)
    if int(cache.manifest.get("dataset", {}).get("n_flipped", 0) or 0) == 0:
        return None
    shared = read_mislabel_metrics(cache.manifest)
    if shared is not None:
        return shared
    from cache_format.mislabels import detection_report

    flipped = cache.train_samples()["flipped"].to_numpy(bool)
    out: dict[str, Any] = {}
    for m in methods:
        if m not in cache.methods:
            continue
        path = cache.path / "methods" / m / f"{SELF_INFLUENCE}.npy"
        if not path.is_file():
            continue
        s = np.asarray(np.load(path), dtype=np.float64)
        if np.ptp(s) <= 1e-6 * max(float(np.abs(s).max()), 1e-30):
            continue  # constant self-influence (gradcos): not a ranking
        out[m] = detection_report(s, flipped)
    return {"source": "evaluate: self-influence ranking", "methods": out, "other": {},
            "n_flipped": int(flipped.sum())}
