"""The ``influence-explorer evaluate RUN`` subcommand (parser + command; registered by precompute.cli).

Kept torch-free at import time: torch is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 5,10,20,40 (got {value!r})") from None


def _floats(value: str) -> list[float]:
    try:
        return [float(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 1e-4,1e-3,1e-2 (got {value!r})") \
            from None


def add_evaluate_parser(sub: Any, default_cache_dir: str) -> argparse.ArgumentParser:
    """Add ``evaluate`` to the CLI's subparsers."""
    ev = sub.add_parser(
        "evaluate", help="measure how far to trust each method on a run (LDS, leave-one-out, brittleness, damping)",
        description="Retrain the run's own model (its recipe and seed) on subsets of its training data and "
                    "measure each influence method against what really happened. Results go to "
                    "<run>/evaluation/ and appear on the explorer's Trust page.")
    ev.add_argument("run", help="run name under --cache-dir, or a run folder")
    ev.add_argument("--cache-dir", default=default_cache_dir,
                    help="folder holding runs (default: $INFLUENCE_EXPLORER_CACHE or ./cache)")
    ev.add_argument("--methods", type=_csv,
                    help="methods to evaluate (default: the run's); methods the run lacks are computed on its model")
    ev.add_argument("--workers", type=int, default=2, help="retraining processes (default 2)")
    ev.add_argument("--threads", type=int, default=1,
                    help="torch threads of the main process (default 1; scoring large models may gain from more)")
    ev.add_argument("--seed", type=int, default=0, help="seed for subsets, sampled points and retraining")
    ev.add_argument("--retrain", choices=["auto", "warm", "recipe"], default="auto",
                    help="auto: converge from the trained model for convex models (warm), else rerun the recipe")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.add_argument("--trust-code", action="store_true",
                    help="allow running the model.factory / data.factory files the run's manifest names (only for "
                         "runs you built yourself; each file's sha256 recorded by precompute is checked first)")

    g = ev.add_argument_group("LDS (linear datamodeling score)")
    g.add_argument("--lds", action=argparse.BooleanOptionalAction, default=True, help="compute LDS (default on)")
    g.add_argument("--lds-subsets", type=int, default=100, help="random training subsets S (default 100)")
    g.add_argument("--lds-fraction", type=float, default=0.5, help="fraction of the training set per subset")
    g.add_argument("--lds-repeats", type=int, default=1, help="retraining seeds per subset (non-convex: use > 1)")
    g.add_argument("--lds-bootstrap", type=int, default=1000, help="bootstrap resamples for the interval")

    g = ev.add_argument_group("leave-one-out")
    g.add_argument("--loo", action=argparse.BooleanOptionalAction, default=True, help="leave-one-out (default on)")
    g.add_argument("--loo-points", type=int, default=50, help="training points left out (default 50)")

    g = ev.add_argument_group("brittleness (counterfactual removal)")
    g.add_argument("--brittleness", action=argparse.BooleanOptionalAction, default=True,
                   help="remove top-k proponents and retrain (default on)")
    g.add_argument("--brittle-tests", type=int, default=10, help="test points (default 10)")
    g.add_argument("--brittle-k", type=_ints, default=[5, 10, 20, 40], help="k grid (default 5,10,20,40)")
    g.add_argument("--brittle-random", type=int, default=5, help="random-removal tries per (test point, k)")
    g.add_argument("--brittle-select", choices=["random", "low-margin"], default="low-margin",
                   help="which correctly classified test points: the least confident (default; confident ones rarely flip) or random")
    g.add_argument("--brittle-methods", type=_csv, help="methods to test (default: all evaluated)")

    g = ev.add_argument_group("damping sensitivity")
    g.add_argument("--damping", action=argparse.BooleanOptionalAction, default=True,
                   help="LDS over a damping grid for damped methods (default on)")
    g.add_argument("--damping-grid", type=_floats, default=[1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0],
                   help="lambda values (default 1e-5,...,1; the run's own value is added)")
    g.add_argument("--damping-methods", type=_csv, help="damped methods to sweep (default: all evaluated)")
    g.add_argument("--damping-tests", type=int, default=120, help="test points scored per lambda (default 120)")

    g = ev.add_argument_group("method agreement")
    g.add_argument("--agreement", action=argparse.BooleanOptionalAction, default=True,
                   help="pairwise Spearman and top-k overlap (default on)")
    g.add_argument("--agreement-k", type=int, default=10, help="k for the top-k overlap (default 10)")
    ev.add_argument("--mislabels", action=argparse.BooleanOptionalAction, default=True,
                    help="include mislabel-detection metrics when the run injected label noise")
    return ev


def settings_from_args(args: argparse.Namespace):
    from precompute.evaluation.settings import (
        AgreementSettings,
        BrittlenessSettings,
        DampingSettings,
        EvalSettings,
        LDSSettings,
        LOOSettings,
    )

    return EvalSettings(
        methods=args.methods, seed=args.seed, workers=args.workers, threads=args.threads, retrain=args.retrain,
        lds=LDSSettings(enabled=args.lds, subsets=args.lds_subsets, fraction=args.lds_fraction,
                        repeats=args.lds_repeats, bootstrap=args.lds_bootstrap),
        loo=LOOSettings(enabled=args.loo, points=args.loo_points),
        brittleness=BrittlenessSettings(enabled=args.brittleness, tests=args.brittle_tests, k=args.brittle_k,
                                        random=args.brittle_random, select=args.brittle_select,
                                        methods=args.brittle_methods),
        damping=DampingSettings(enabled=args.damping, grid=args.damping_grid, methods=args.damping_methods,
                                tests=args.damping_tests),
        agreement=AgreementSettings(enabled=args.agreement, k=args.agreement_k),
        mislabels=args.mislabels,
    ).validate()


def cmd_evaluate(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    from cache_format.evaluation import load_trust
    from precompute.evaluation.api import evaluate_run
    from precompute.evaluation.context import trusting_code

    with trusting_code(args.trust_code):
        result = evaluate_run(args.run, settings, cache_dir=args.cache_dir, progress=not args.no_progress,
                              log=lambda m: print(m, file=sys.stderr))
    tr = load_trust(result.path.parent.parent)
    print(f"\nevaluation written: {result.path}  ({result.retrained} models retrained, "
          f"{result.timings.get('total', 0):.1f}s)")
    if tr is not None:
        table = tr.method_table()
        cols = ["method", "LDS", "LDS low", "LDS high", "LDS (margin)", "LOO Pearson", "LOO Spearman",
                "mislabel ROC-AUC", "best damping"]
        table = table[[c for c in cols if table[c].notna().any() or c == "method"]]
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.0e}"))
        loo = tr.part("loo")
        if loo and not loo.get("meaningful"):
            print("note: leave-one-out is not meaningful for this non-convex model (retraining noise dominates)")
        b = tr.brittleness_frame()
        if len(b):
            print("\nbrittleness: fraction of test points whose prediction flipped after removing k samples")
            print(b.pivot(index="method", columns="k", values="flip_rate").to_string(float_format=lambda v: f"{v:.2f}"))
    print(f"open it with: influence-explorer app --cache-dir {shlex.quote(str(result.path.parent.parent.parent))}"
          "  (Trust page)")
    return 0
