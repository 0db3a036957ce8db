"""Damping sensitivity: LDS of a damped method over a grid of lambda values.

Influence estimates are fragile in lambda (the same method can go from good to near-random with one
damping value). For each damped method we refit it on the run's model for every lambda of the grid,
score a fixed sample of test points and compute LDS against the stored LDS ground truth. The best
lambda is recorded; ``influence-explorer precompute --damping from-eval`` uses it. The method is also
scored with ``damping = "auto"`` on the same test points (``auto_lds``), so how far the no-tuning
rule is from the grid's best is read off one sweep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from precompute.errors import InfluenceExplorerError
from precompute.evaluation.context import RunContext
from precompute.evaluation.lds import LDSGroundTruth, lds
from precompute.evaluation.settings import DampingSettings


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)


def damped_methods(candidates: list[str]) -> list[str]:
    """The candidates whose estimator declares a damping (``capabilities.damping``), in order."""
    from precompute.influence.registry import damped_methods as registry_damped

    return registry_damped(candidates)


def damping_test_points(n_test: int, n: int, seed: int) -> np.ndarray:
    if n >= n_test:
        return np.arange(n_test)
    return np.sort(np.random.default_rng([seed, 15485863]).choice(n_test, size=n, replace=False))


def evaluate_damping(ctx: RunContext, methods: list[str], gt: LDSGroundTruth, settings: DampingSettings,
                     seed: int, log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Per method: ``{"grid", "lds", "ci", "errors", "best", "best_lds", "current", "auto_lds", "auto_error"}``
    (``auto_lds``: LDS with ``damping = "auto"`` on the same test points; None when it failed)."""
    from tqdm.auto import tqdm

    tests = damping_test_points(ctx.n_test, settings.tests, seed)
    target = gt.targets()["loss"][:, tests]
    out: dict[str, Any] = {}
    for name in methods:
        opts = ctx.method_options(name)
        recorded = ctx.manifest.get("methods", {}).get(name, {}).get("damping")  # resolved lambda, if the run has it
        current = opts.get("damping", ctx.cfg.influence.damping) if recorded is None else recorded
        grid = sorted({float(v) for v in settings.grid} | ({float(current)} if _is_number(current) else set()))
        values, cis, errors, secs = [], [], [], []
        bar = tqdm(grid, desc=f"damping {name}", unit="lambda", disable=not progress, leave=False)
        for lam in bar:
            t0 = time.perf_counter()
            try:
                s = ctx.compute_scores(name, {**opts, "damping": lam}, test_index=tests)
            except InfluenceExplorerError as exc:  # e.g. H + lambda I not positive definite
                values.append(float("nan"))
                cis.append([float("nan"), float("nan")])
                errors.append(str(exc))
                secs.append(round(time.perf_counter() - t0, 3))
                continue
            r = lds(s, gt.masks, target, n_boot=200, seed=seed)
            values.append(r["lds"])
            cis.append(r["ci"])
            errors.append(None)
            secs.append(round(time.perf_counter() - t0, 3))
        auto_lds, auto_error = _auto_lds(ctx, name, opts, tests, gt, target, seed)
        arr = np.array(values, dtype=float)
        best = int(np.nanargmax(arr)) if np.isfinite(arr).any() else None
        out[name] = {"grid": grid, "lds": values, "ci": cis, "errors": errors, "seconds": secs,
                     "best": grid[best] if best is not None else None,
                     "best_lds": values[best] if best is not None else None,
                     "current": current, "n_test": len(tests), "auto_lds": auto_lds, "auto_error": auto_error}
        auto_txt = f"auto LDS {auto_lds:.3f}" if auto_lds is not None else f"auto failed ({auto_error})"
        if best is not None:
            log(f"[damping] {name}: best lambda {grid[best]:g} (LDS {values[best]:.3f}), {auto_txt}; "
                f"run uses {current}")
        else:
            log(f"[damping] {name}: no lambda of the grid worked ({errors[-1]})")
    return out


def _auto_lds(ctx: RunContext, name: str, opts: dict[str, Any], tests: np.ndarray, gt: LDSGroundTruth,
              target: np.ndarray, seed: int) -> tuple[float | None, str | None]:
    """LDS of ``name`` with ``damping = "auto"`` on ``tests``: ``(lds, None)`` or ``(None, error)``."""
    try:
        s = ctx.compute_scores(name, {**opts, "damping": "auto"}, test_index=tests)
    except InfluenceExplorerError as exc:
        return None, str(exc)
    v = lds(s, gt.masks, target, n_boot=0, seed=seed)["lds"]
    return (float(v), None) if np.isfinite(v) else (None, "LDS is not finite")
