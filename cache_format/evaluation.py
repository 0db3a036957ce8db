"""Torch-free reader of a run's evaluation (``influence-explorer evaluate``): how far to trust each method.

Layout (written by precompute's evaluation stage; see docs/evaluation.md)::

    <run>/evaluation/results.json               LDS, leave-one-out, brittleness, damping, agreement,
                                                mislabel metrics; written last, atomically
    <run>/evaluation/groundtruth/<kind>-<key>/   retrained models' test losses/margins (.npy + meta.json)

Results made for another model or dataset (fingerprints differ from the manifest's) are *stale*: the
helpers below ignore them and the Trust page says to re-run ``evaluate``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cache_format.names import (
    EVALUATION_DIR,
    GROUNDTRUTH_DIR,
    MANIFEST,
    METHODS_DIR,
    RESULTS,
    RESULTS_FORMAT,
    SCORES,
    SELF_PREFIX,
    is_safe_name,
)

if TYPE_CHECKING:  # pandas is imported where a table is built (precompute reads results without it)
    import pandas as pd


def evaluate_command(run_name: str) -> str:
    return f"influence-explorer evaluate {run_name}"


def read_mislabel_metrics(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The mislabels stage's detection metrics from the manifest, split into influence methods (their
    self-influence ranking) and other rankings; None when the run has none."""
    det = (manifest.get("mislabels") or {}).get("detection")
    if not det:
        return None
    methods = {k[len(SELF_PREFIX):]: v for k, v in det.items() if k.startswith(SELF_PREFIX)}
    other = {k: v for k, v in det.items() if not k.startswith(SELF_PREFIX)}
    return {"source": "precompute mislabels stage", "methods": methods, "other": other,
            "n_flipped": int(manifest.get("dataset", {}).get("n_flipped", 0) or 0)}


@lru_cache(maxsize=32)
def _read_json(path: str, mtime: float) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _run_parts(run: Any) -> tuple[Path, dict[str, Any]]:
    """(path, manifest) of a :class:`cache_format.RunCache` or of a run folder."""
    if hasattr(run, "manifest") and hasattr(run, "path"):
        return Path(run.path), run.manifest
    path = Path(run)
    return path, json.loads((path / MANIFEST).read_text())


@dataclass
class TrustResults:
    """A run's evaluation results; ``stale`` if made for another model/dataset than the run's."""

    path: Path
    manifest: dict[str, Any]
    data: dict[str, Any]

    @property
    def stale(self) -> bool:
        return (self.data.get("model_fingerprint") != self.manifest.get("model", {}).get("fingerprint")
                or self.data.get("dataset_fingerprint") != self.manifest.get("dataset", {}).get("fingerprint"))

    @property
    def run_name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.manifest.get("dataset", {}).get("class_names", [])]

    def part(self, name: str) -> dict[str, Any] | None:
        v = self.data.get(name)
        return v if isinstance(v, dict) and v else None

    @property
    def methods(self) -> list[str]:
        """The run's methods, then any extra methods evaluate scored."""
        out = list(self.manifest.get("methods", {}))
        for part in ("lds", "loo", "brittleness", "damping"):
            for m in (self.part(part) or {}).get("methods", {}):
                if m not in out:
                    out.append(m)
        return out

    # ------------------------------------------------------------------ per-method numbers
    def lds(self, method: str) -> dict[str, Any] | None:
        return ((self.part("lds") or {}).get("methods") or {}).get(method)

    def mislabels(self) -> dict[str, Any] | None:
        return self.part("mislabels") or read_mislabel_metrics(self.manifest)

    def method_table(self) -> pd.DataFrame:
        """One row per method: LDS with interval, LDS (margin), LOO, mislabel AUC, best damping, seconds."""
        import pandas as pd

        loo = (self.part("loo") or {}).get("methods") or {}
        damp = (self.part("damping") or {}).get("methods") or {}
        mis = ((self.mislabels() or {}).get("methods")) or {}
        extra = (self.data.get("computed_seconds") or {})
        rows = []
        for m in self.methods:
            lds = self.lds(m) or {}
            ci = lds.get("ci") or [None, None]
            info = self.manifest.get("methods", {}).get(m, {})
            rows.append({
                "method": m,
                "LDS": lds.get("lds"), "LDS low": ci[0], "LDS high": ci[1],
                "LDS (margin)": lds.get("lds_margin"),
                "LOO Pearson": (loo.get(m) or {}).get("pearson"),
                "LOO Spearman": (loo.get(m) or {}).get("spearman"),
                "mislabel ROC-AUC": (mis.get(m) or {}).get("roc_auc"),
                "damping used": (damp.get(m) or {}).get("current"),
                "best damping": (damp.get(m) or {}).get("best"),
                "compute s": info.get("seconds", extra.get(m)),
            })
        return pd.DataFrame(rows, columns=["method", "LDS", "LDS low", "LDS high", "LDS (margin)", "LOO Pearson",
                                           "LOO Spearman", "mislabel ROC-AUC", "damping used", "best damping",
                                           "compute s"])

    def best_method(self) -> str | None:
        vals = {m: (self.lds(m) or {}).get("lds") for m in self.methods}
        vals = {m: v for m, v in vals.items() if v is not None and np.isfinite(v)}
        return max(vals, key=vals.get) if vals else None

    # ------------------------------------------------------------------ plots' data
    def damping_frame(self) -> pd.DataFrame:
        """Long format: method, damping, LDS, low, high, best (bool), current (bool)."""
        import pandas as pd

        rows = []
        for m, d in ((self.part("damping") or {}).get("methods") or {}).items():
            for i, lam in enumerate(d.get("grid", [])):
                ci = (d.get("ci") or [[None, None]] * len(d["grid"]))[i] or [None, None]
                rows.append({"method": m, "damping": lam, "LDS": d["lds"][i], "low": ci[0], "high": ci[1],
                             "best": lam == d.get("best"), "current": lam == d.get("current"),
                             "error": (d.get("errors") or [None] * len(d["grid"]))[i]})
        return pd.DataFrame(rows, columns=["method", "damping", "LDS", "low", "high", "best", "current", "error"])

    def agreement(self) -> dict[str, Any] | None:
        return self.part("agreement")

    def brittleness_frame(self) -> pd.DataFrame:
        """Long format: method (or ``random``), k, flip_rate."""
        import pandas as pd

        b = self.part("brittleness")
        if not b:
            return pd.DataFrame(columns=["method", "k", "flip_rate"])
        rows = []
        for m, d in (b.get("methods") or {}).items():
            rows += [{"method": m, "k": k, "flip_rate": r} for k, r in zip(b["k"], d["flip_rate"], strict=False)]
        rnd = b.get("random") or {}
        rows += [{"method": "random", "k": k, "flip_rate": r}
                 for k, r in zip(b["k"], rnd.get("flip_rate", []), strict=False)]
        return pd.DataFrame(rows, columns=["method", "k", "flip_rate"])

    def loo_pairs(self, method: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(predicted, actual) leave-one-out change of test loss, ``[n_test, m]`` each, for a method the
        run stores scores of; None if unavailable."""
        loo = self.part("loo")
        key = str((loo or {}).get("key"))
        if not loo or not is_safe_name(method) or not is_safe_name(key):
            return None
        d = self.path / EVALUATION_DIR / GROUNDTRUTH_DIR / f"loo-{key}"
        scores_path = self.path / METHODS_DIR / method / f"{SCORES}.npy"
        if not (d / "delta_loss.npy").is_file() or not scores_path.is_file():
            return None
        idx = np.load(d / "train_index.npy", allow_pickle=False)
        actual = np.load(d / "delta_loss.npy", allow_pickle=False).T
        n_train = int(self.manifest["dataset"]["n_train"])
        pred = np.asarray(np.load(scores_path, mmap_mode="r", allow_pickle=False)[:, idx], dtype=np.float64) / n_train
        return pred, actual

    def counterfactual(self, test_index: int, method: str | None = None) -> dict[str, Any] | None:
        """What removing ``test_index``'s top-k proponents did, for ``method`` (default: the evaluated
        method with the best LDS): ``{method, k, flipped, from, to, random_flips, tries, removed, per_k}``."""
        b = self.part("brittleness")
        if not b or test_index not in b.get("tests", []):
            return None
        methods = b.get("methods") or {}
        if method not in methods:
            ranked = sorted(methods, key=lambda m: -((self.lds(m) or {}).get("lds") or -np.inf))
            if not ranked:
                return None
            method = ranked[0]
        d = methods[method]
        a = b["tests"].index(test_index)
        ks = list(b["k"])
        flipped = d["flipped"][a]
        rnd = b.get("random") or {}
        tries = int(rnd.get("tries", 0))
        ref = b["reference_pred"][a]
        per_k = [{"k": k, "flipped": bool(flipped[j]), "to": d["new_pred"][a][j],
                  "random_flips": (rnd.get("flips") or [[0] * len(ks)] * (a + 1))[a][j] if tries else None}
                 for j, k in enumerate(ks)]
        first = next((p for p in per_k if p["flipped"]), None)
        pick = first or per_k[-1]
        return {"method": method, "k": pick["k"], "flipped": pick["flipped"], "from": ref, "to": pick["to"],
                "random_flips": pick["random_flips"], "tries": tries,
                "removed": d["removed"][a][:pick["k"]], "per_k": per_k}


def load_trust(run: Any) -> TrustResults | None:
    """The evaluation of ``run`` (a RunCache or run folder), or None if it was never evaluated."""
    path, manifest = _run_parts(run)
    f = path / EVALUATION_DIR / RESULTS
    if not f.is_file():
        return None
    data = _read_json(str(f), f.stat().st_mtime)
    if not data or data.get("format") != RESULTS_FORMAT:
        return None
    return TrustResults(path=path, manifest=manifest, data=data)


def _fresh(run: Any) -> TrustResults | None:
    try:
        tr = load_trust(run)
    except (OSError, ValueError):
        return None
    return tr if tr is not None and not tr.stale else None


def recorded_best_damping(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{method: {"best": lambda, "best_lds": LDS, "model_fingerprint": ...}}`` from the damping
    sensitivity stored by ``evaluate`` in ``run_dir`` ({} if there is none)."""
    path = Path(run_dir) / EVALUATION_DIR / RESULTS
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    for m, d in ((data.get("damping") or {}).get("methods") or {}).items():
        if isinstance(d.get("best"), int | float):
            out[m] = {"best": float(d["best"]), "best_lds": d.get("best_lds"),
                      "model_fingerprint": data.get("model_fingerprint")}
    return out


def method_lds(run: Any, method: str) -> float | None:
    """The method's LDS on this run, or None (not evaluated, or results stale)."""
    tr = _fresh(run)
    v = (tr.lds(method) or {}).get("lds") if tr else None
    return float(v) if v is not None and np.isfinite(v) else None


def method_label_with_lds(run: Any, method: str) -> str:
    """``"exact (LDS 0.97)"`` when evaluated, else just the method name: for method pickers."""
    v = method_lds(run, method)
    return f"{method} (LDS {v:.2f})" if v is not None else method


def counterfactual_sentence(run: Any, test_index: int, method: str | None = None) -> str | None:
    """One sentence on what removing this test point's top proponents did, or None if not evaluated.

    E.g. "Removing its top 10 proponents (exact) flipped the prediction from 7 to 1; removing 10 random
    training samples flipped it in 0 of 5 tries."
    """
    tr = _fresh(run)
    cf = tr.counterfactual(int(test_index), method) if tr else None
    if cf is None:
        return None
    names = tr.class_names

    def cls(c: int) -> str:
        return names[c] if 0 <= c < len(names) else str(c)

    k = cf["k"]
    if cf["flipped"]:
        s = f"Removing its top {k} proponents ({cf['method']}) flipped the prediction from {cls(cf['from'])} to {cls(cf['to'])}"
    else:
        s = f"Removing its top {k} proponents ({cf['method']}) did not flip the prediction ({cls(cf['from'])})"
    if cf["tries"]:
        s += (f"; removing {k} random training samples flipped it in {cf['random_flips']} of {cf['tries']} "
              f"{'try' if cf['tries'] == 1 else 'tries'}")
    return s + "."
