"""A/B of the two HVP modes of ``precompute.hessian.create_hvp_function``: forward-over-reverse (``jvp`` of
``grad``) against reverse-over-reverse (``vjp`` of ``grad``, its graph kept when all rows are one block).

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_hvp.py [--threads 1] [--models mlp,cnn]
[--k 1,2,4,8,16,32,64] [--repeats 5]`` (well under a minute on one core).

Models: ``mlp`` is the peer benchmark's 4,810-parameter ReLU MLP (64 -> 64 -> 10, ``bench_peers.py``),
``cnn`` the ``digits-cnn`` sample model; both at their initialisation on the 1,437 digits training rows,
float32 (the cost of an HVP does not depend on the weights). For each k: ms per call and per vector,
best of ``--repeats`` (each timed block runs enough calls for ~60 vectors), after a warm-up call (for
reverse mode that first call is the one that builds the kept graph: printed as ``first``); and the
largest relative difference of the two modes' H V. The crossover sets ``REVERSE_HVP_MAX_VECTORS``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from precompute.config import load_config  # noqa: E402
from precompute.data import load_dataset  # noqa: E402
from precompute.hessian import REVERSE_HVP_MAX_VECTORS, create_hvp_function  # noqa: E402
from precompute.models import build_model  # noqa: E402
from precompute.params import ParamSpace, select_parameters  # noqa: E402
from sample_data import sample_config_path  # noqa: E402


def setup(name: str):
    cfg = load_config(sample_config_path("digits-cnn" if name == "cnn" else "digits"))
    ds = load_dataset(cfg.data)
    x, y = torch.as_tensor(ds.x_train, dtype=torch.float32), torch.as_tensor(ds.y_train)
    torch.manual_seed(0)
    if name == "mlp":
        from bench_peers import make_model

        model = make_model()
    else:
        model = build_model(cfg.model, ds.input_shape, ds.n_classes)
    model.eval()
    return model, ParamSpace(model, select_parameters(model, "all")), x, y, cfg.train.weight_decay


def best_ms(fn, v: torch.Tensor, repeats: int) -> float:
    calls = max(1, 60 // len(v))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(v)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--k", default="1,2,4,8,16,32,64")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"REVERSE_HVP_MAX_VECTORS = {REVERSE_HVP_MAX_VECTORS}; {args.threads} thread(s)")
    for name in args.models.split(","):
        model, space, x, y, wd = setup(name)
        print(f"\n{name}: p = {space.size:,}, n = {len(x):,}")
        print("| k | forward ms (per vector) | reverse ms (per vector) | reverse first call ms | reverse / forward "
              "| max rel diff |")
        print("|---:|---:|---:|---:|---:|---:|")
        for k in (int(a) for a in args.k.split(",")):
            v = torch.randn(k, space.size, generator=torch.Generator().manual_seed(k))
            fwd = create_hvp_function(model, space, x, y, wd, mode="forward")
            rev = create_hvp_function(model, space, x, y, wd, mode="reverse")
            a = fwd(v)
            t0 = time.perf_counter()
            b = rev(v)
            first = (time.perf_counter() - t0) * 1e3
            diff = float((a - b).abs().max() / a.abs().max())
            f_ms, r_ms = best_ms(fwd, v, args.repeats), best_ms(rev, v, args.repeats)
            print(f"| {k} | {f_ms:.2f} ({f_ms / k:.3f}) | {r_ms:.2f} ({r_ms / k:.3f}) | {first:.2f} "
                  f"| {r_ms / f_ms:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
