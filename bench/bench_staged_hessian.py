"""The exact method's explicit Hessian: staged by layer (``hessian.staged_hessian``, the default for an
``nn.Sequential``) against p HVPs of the whole model (``explicit_hessian``), on the digits MLP and CNN.

Usage: ``.venv/bin/python bench/bench_staged_hessian.py [--archs mlp,cnn] [--epochs 60] [--threads 1]``
Prints both wall times in the same run, their ratio, and the largest entrywise difference relative
to max |H| (rounding only: both are the same Hessian in the model's float32).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_estimators import build  # noqa: E402

from precompute.hessian import create_hvp_function, explicit_hessian, staged_hessian  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default="mlp,cnn")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | p | full (p HVPs) s | staged s | ratio | max abs diff / max abs H |")
    print("|---|---:|---:|---:|---:|---:|")
    for arch in args.archs.split(","):
        task, _, _ = build(arch, args.epochs)
        p = task.space.size
        t0 = time.perf_counter()
        hvp = create_hvp_function(task.model, task.space, task.x_train, task.y_train, task.weight_decay,
                                  task.batch_size)
        full = explicit_hessian(hvp, p, torch.float32).double()
        t1 = time.perf_counter()
        staged = staged_hessian(task.model, task.space, task.x_train, task.y_train, task.weight_decay,
                                task.batch_size).double()
        t2 = time.perf_counter()
        diff = float((full - staged).abs().max() / full.abs().max())
        print(f"| {arch} | {p:,} | {t1 - t0:.2f} | {t2 - t1:.2f} | {(t1 - t0) / (t2 - t1):.1f}x | {diff:.1e} |",
              flush=True)


if __name__ == "__main__":
    main()
