"""``evaluate_run``: every part of the evaluation for one run, stored in ``<run>/evaluation/``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from precompute.errors import ConfigError, InfluenceExplorerError, MethodError
from precompute.evaluation import brittleness as cf
from precompute.evaluation import lds as lds_mod
from precompute.evaluation import loo as loo_mod
from precompute.evaluation.agreement import agreement
from precompute.evaluation.context import RunContext, resolve_run_dir
from precompute.evaluation.damping import damped_methods, evaluate_damping
from precompute.evaluation.mislabels import mislabel_metrics
from precompute.evaluation.retrain import Retrainer
from precompute.evaluation.settings import EvalSettings
from precompute.evaluation.store import EvaluationStore


@dataclass
class EvaluationResult:
    """What ``evaluate`` produced: the stored results dict, its path, timings and retrain count."""

    path: Path
    results: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    retrained: int = 0


def _methods(ctx: RunContext, settings: EvalSettings) -> list[str]:
    from precompute.influence import available_methods

    methods = list(settings.methods) if settings.methods else ctx.run_methods
    known = set(available_methods()) | set(ctx.run_methods)
    for m in methods:
        if m not in known:
            raise ConfigError(f"evaluate --methods: unknown method {m!r}; the run has {ctx.run_methods}, "
                              f"known methods: {sorted(known)}")
    return methods


def evaluate_run(run: str | Path, settings: EvalSettings | None = None, cache_dir: str | Path | None = None,
                 progress: bool = True, log: Callable[[str], None] = print) -> EvaluationResult:
    """Evaluate the attribution quality of a run's methods (see docs/evaluation.md).

    ``run`` is a run folder or a run name under ``cache_dir``. Ground truth (retrained models) is
    reused across calls; results for methods not re-evaluated now are kept.
    """
    import torch

    settings = (settings or EvalSettings()).validate()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _evaluate(run, settings, cache_dir, progress, log)
    finally:
        torch.set_num_threads(threads)


def _evaluate(run: str | Path, settings: EvalSettings, cache_dir: str | Path | None, progress: bool,
              log: Callable[[str], None]) -> EvaluationResult:
    run_dir = resolve_run_dir(run, cache_dir)
    ctx = RunContext.load(run_dir)
    methods = _methods(ctx, settings)
    store = EvaluationStore(run_dir, ctx.model_fingerprint, ctx.dataset_fingerprint)
    results = store.load_results()
    results["run"] = ctx.manifest.get("name", run_dir.name)
    results["convex"] = ctx.convex
    timings: dict[str, float] = dict(results.get("timings") or {})
    seed = settings.seed
    t_all = time.perf_counter()

    def stage(name: str):
        class _T:
            def __enter__(self):
                self.t0 = time.perf_counter()
                log(f"[{name}] ...")

            def __exit__(self, *exc):
                if exc[0] is None:
                    timings[name] = round(time.perf_counter() - self.t0, 3)
                    log(f"[{name}] done in {timings[name]:.1f}s")
                    if name != "scores":  # keep each finished part even if a later one fails
                        store.save_results({**results, "timings": timings})
        return _T()

    with Retrainer(ctx, workers=settings.workers, progress=progress) as rt:
        mode = rt.mode(settings.retrain)
        with stage("scores"):
            scores = {}
            errors = {}
            for m in methods:
                try:
                    scores[m] = ctx.scores(m)
                except InfluenceExplorerError as exc:  # a method that cannot run on this model: skip it
                    errors[m] = str(exc)
                    log(f"[scores] {m}: skipped ({exc})")
                    continue
                if m in ctx.computed_seconds:
                    log(f"[scores] {m}: not in the run; computed on its model in {ctx.computed_seconds[m]:.1f}s")
            if not scores:
                raise MethodError(f"evaluate: none of the methods {methods} could be scored on this run "
                                  f"({'; '.join(errors.values())})")
            methods = list(scores)
            results["method_errors"] = errors
        results["computed_seconds"] = {**(results.get("computed_seconds") or {}), **ctx.computed_seconds}

        gt = None
        if settings.lds.enabled or settings.damping.enabled:
            with stage("lds"):
                gt = lds_mod.ensure_groundtruth(ctx, store, rt, settings.lds, seed, mode, log)
                if settings.lds.enabled:
                    part_settings = {**dataclasses.asdict(settings.lds), "seed": seed, "mode": mode}
                    old = results.get("lds") or {}
                    keep = old.get("methods", {}) if old.get("key") == gt.key and old.get("settings") == part_settings \
                        else {}
                    new = lds_mod.evaluate_lds(scores, gt, settings.lds, seed)
                    results["lds"] = {"key": gt.key, "settings": part_settings, "mode": mode,
                                      "subsets": int(len(gt.masks)), "retrained": gt.retrained,
                                      "methods": {**keep, **new}}
                    for m, r in new.items():
                        log(f"[lds] {m:<10} LDS {r['lds']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]  "
                            f"(margin {r['lds_margin']:.3f})")

        if settings.loo.enabled:
            with stage("loo"):
                loo_key, gt_loo = loo_mod.ensure_groundtruth(ctx, store, rt, settings.loo, seed, mode, log)
                part_settings = {**dataclasses.asdict(settings.loo), "seed": seed, "mode": mode}
                old = results.get("loo") or {}
                keep = old.get("methods", {}) if old.get("settings") == part_settings else {}
                new = loo_mod.evaluate_loo(scores, gt_loo, ctx.n_train)
                meaningful = ctx.convex and mode == "warm"
                results["loo"] = {"key": loo_key, "settings": part_settings, "convex": ctx.convex, "meaningful": meaningful,
                                  "note": "retrained to convergence (convex model)" if meaningful else
                                  "non-convex model or recipe retraining: differences are dominated by training "
                                  "noise; not meaningful",
                                  "methods": {**keep, **new}}
                for m, r in new.items():
                    log(f"[loo] {m:<10} Pearson {r['pearson']:.3f}  Spearman {r['spearman']:.3f}"
                        + ("" if meaningful else "  (not meaningful: non-convex)"))

        if settings.brittleness.enabled:
            with stage("brittleness"):
                bs = settings.brittleness
                base = cf.ensure_baseline(ctx, store, rt, bs, seed, mode, log)
                part_settings = {**dataclasses.asdict(bs), "seed": seed, "mode": mode}
                old = results.get("brittleness") or {}
                old_methods = old.get("methods", {}) if old.get("key") == base["key"] else {}
                wanted = [m for m in (bs.methods or methods) if m in scores or m in ctx.run_methods]
                per_method = dict(old_methods)
                for m in wanted:
                    s = scores[m] if m in scores else ctx.scores(m)
                    h = cf.sets_hash(cf.removal_sets(s, base["tests"], list(bs.k)))
                    if m in old_methods and old_methods[m].get("sets_hash") == h:
                        log(f"[brittleness] {m}: same removal sets as before; reused")
                        continue
                    per_method[m] = cf.evaluate_method(ctx, rt, s, base, bs, mode, m)
                results["brittleness"] = {"key": base["key"], "settings": part_settings, "mode": mode,
                                          "k": list(bs.k), "tests": base["tests"].tolist(),
                                          "reference_pred": base["reference_pred"].tolist(),
                                          "random": cf.baseline_summary(base, bs), "methods": per_method}
                rnd = results["brittleness"]["random"]["flip_rate"]
                for m in wanted:
                    fr = per_method[m]["flip_rate"]
                    log(f"[brittleness] {m:<10} flip rate " + " ".join(
                        f"k={k}:{a:.2f}(rand {b:.2f})" for k, a, b in zip(bs.k, fr, rnd, strict=False)))

        if settings.damping.enabled:
            dm = damped_methods(settings.damping.methods or methods)
            if dm:
                with stage("damping"):
                    assert gt is not None
                    new = evaluate_damping(ctx, dm, gt, settings.damping, seed, log, progress)
                    old = results.get("damping") or {}
                    part_settings = {**dataclasses.asdict(settings.damping), "lds_key": gt.key, "seed": seed}
                    keep = old.get("methods", {}) if old.get("settings") == part_settings else {}
                    results["damping"] = {"settings": part_settings, "methods": {**keep, **new}}
            else:
                log("[damping] no damped method among " + ", ".join(settings.damping.methods or methods)
                    + "; skipped")

        if settings.agreement.enabled and len(methods) >= 2:
            with stage("agreement"):
                results["agreement"] = agreement(scores, settings.agreement.k, settings.agreement.tests, seed)

        if settings.mislabels:
            mis = mislabel_metrics(run_dir, methods)
            if mis is not None:
                results["mislabels"] = mis
        retrained = rt.count

    timings["total"] = round(time.perf_counter() - t_all, 3)
    results["timings"] = timings
    results["last_retrained"] = retrained
    results["settings"] = settings.to_dict()
    path = store.save_results(results)
    log(f"[evaluate] {retrained} models retrained; results: {path}")
    return EvaluationResult(path=path, results=results, timings=timings, retrained=retrained)

