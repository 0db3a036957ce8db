"""Per-sample gradients: the hook path against ``vmap(grad)`` on the same model and data.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_per_sample_gradients.py [--threads 1] [--repeats 5]

Each path runs in a fresh process (``--worker hooks|vmap``), so the first call's one-off costs (for
``vmap(grad)``: the lazy ``import torch._dynamo`` that ``torch.func.grad`` triggers) are measured
separately from the steady state: ``first`` is the first 512-row batch, ``steady`` the median over
``--repeats`` passes over all rows in 512-row batches. Models: the peers benchmark's 64 -> 64 -> 10
ReLU MLP on 1,437 digits rows, and the built-in ``cnn`` on 1,437 random 1 x 8 x 8 images; float32.
The ratio is hooks / vmap (< 1: the hook path is faster); both paths give the same rows (checked).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N, BATCH = 1437, 512


def worker(path: str, arch: str, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    import precompute.gradients as gradients
    from precompute.config import ModelConfig
    from precompute.models import build_model
    from precompute.params import ParamSpace, select_parameters

    if path == "vmap":
        gradients.hook_plan = lambda model, space: None  # force the torch.func path
    torch.manual_seed(0)
    if arch == "mlp":
        from torch import nn

        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    else:
        model = build_model(ModelConfig(arch="cnn", hidden=[32]), (1, 8, 8), 10)
    model.eval()
    x, y = torch.randn(N, 1, 8, 8), torch.randint(0, 10, (N,))
    space = ParamSpace(model, select_parameters(model, "all"))
    t0 = time.perf_counter()
    first = gradients.per_sample_gradients(model, x[:BATCH], y[:BATCH], space, BATCH)
    t_first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        g = gradients.per_sample_gradients(model, x, y, space, BATCH)
        times.append(time.perf_counter() - t0)
    return {"first": t_first, "steady": statistics.median(times), "checksum": float(g.double().abs().sum()),
            "first_checksum": float(first.double().abs().sum()), "dynamo": "torch._dynamo" in sys.modules}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker")
    ap.add_argument("--arch")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.arch, args.repeats, args.threads)))
        return
    print(f"{args.threads} thread(s), {N} rows in batches of {BATCH}, float32; seconds\n")
    print("| model | path | first batch (fresh process) | steady, all rows | torch._dynamo imported |")
    print("|---|---|---:|---:|---|")
    for arch in ("mlp", "cnn"):
        res = {}
        for path in ("vmap", "hooks"):
            cmd = [sys.executable, __file__, "--worker", path, "--arch", arch, "--repeats", str(args.repeats),
                   "--threads", str(args.threads)]
            res[path] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            r = res[path]
            print(f"| {arch} | {path} | {r['first']:.3f} | {r['steady']:.3f} | {r['dynamo']} |")
        v, h = res["vmap"], res["hooks"]
        same = abs(v["checksum"] - h["checksum"]) <= 1e-4 * abs(v["checksum"])
        print(f"| {arch} | hooks / vmap | {h['first'] / v['first']:.2f} | {h['steady'] / v['steady']:.2f} "
              f"| same rows: {same} |")


if __name__ == "__main__":
    main()
