"""Refuse, before any work, a method whose exact-gradient store or resident state cannot fit.

Methods that declare ``capabilities.compressed_store`` run on the run's compressed gradients (``k``
columns). Every other method stores exact per-sample gradients (``[n_train, p]`` on disk, chunked) and
some keep ``p``-sized state in memory (``exact``: the ``[p, p]`` float64 Hessian and its factor;
``arnoldi``: its ``[p, n_iter]`` Krylov basis). When that cannot fit, the run stops up front with the
sizes it would need and the methods that would work (instead of after hours, or by the OOM killer).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from precompute.errors import ConfigError

#: keep this share of the cache disk free for the rest of the run (scores, thumbnails, other methods)
DISK_HEADROOM = 0.9


def _gb(n: float) -> str:
    return f"{n / 2**30:,.1f} GB" if n >= 2**30 else f"{n / 2**20:,.0f} MB"


def resident_bytes(est: Any, p: int) -> tuple[int, str]:
    """``(bytes, what)``: the method's p-sized in-memory state (0 when it is O(batch x p) only)."""
    if est.name == "exact":
        return 2 * p * p * 8, f"the [{p:,} x {p:,}] float64 Hessian and its factorisation"
    if est.name == "arnoldi":
        m = min(int(getattr(est.config, "n_iter", 0)), p)
        return (m + 1) * p * 8, f"its [{p:,} x {m + 1}] float64 Krylov basis"
    return 0, ""


def check_methods_fit(estimators: dict[str, Any], n_train: int, p: int, itemsize: int, budget: int,
                      cache_dir: str | Path, compressed: bool) -> None:
    """Raise :class:`ConfigError` naming the first method that cannot run (``compressed``: the run has a
    gradient compressor, used by the methods that declare ``compressed_store``)."""
    exact_side = [n for n, e in estimators.items() if getattr(e, "factor_width_scales_with_p", True)
                  and not (compressed and e.capabilities.compressed_store)]
    if not exact_side:
        return
    folder = Path(cache_dir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    store = n_train * p * itemsize
    fix = (f"use a method that runs on compressed gradients ({_scalable()}) or restrict the influence "
           "parameters (influence.params = \"last_layer\")")
    for name in exact_side:
        est = estimators[name]
        need, what = resident_bytes(est, p)
        if need > budget:
            raise ConfigError(f"influence.methods: '{name}' would hold {what} ({_gb(need)}), above the memory budget "
                              f"of {_gb(budget)} (--memory-budget); {fix}")
        if store > DISK_HEADROOM * free:
            raise ConfigError(f"influence.methods: '{name}' needs its exact per-sample gradients on disk "
                              f"([{n_train:,} x {p:,}] {itemsize * 8}-bit = {_gb(store)}) but {folder} has "
                              f"{_gb(free)} free; {fix}")


def _scalable() -> str:
    from precompute.influence import available_methods, estimator_class

    return ", ".join(m for m in available_methods() if estimator_class(m).capabilities.compressed_store)


def check_run_fits(cfg: Any, estimators: dict[str, Any], model: Any, n_train: int, budget: int,
                   out_dir: str | Path) -> None:
    """:func:`check_methods_fit` for a run: its influence parameters, dtype and compression choice."""
    from precompute.params import ParamSpace, select_parameters
    from precompute.store.compression_choice import resolve_kind

    p = ParamSpace(model, select_parameters(model, cfg.influence.params)).size
    itemsize = {"float16": 2, "float32": 4, "float64": 8}.get(cfg.influence.store_dtype,
                                                               8 if cfg.model.dtype == "float64" else 4)
    kind, _ = resolve_kind(cfg, n_train, p, budget)
    check_methods_fit(estimators, n_train, p, itemsize, budget, out_dir, kind != "none")
