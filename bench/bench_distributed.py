"""Distributed benchmark: the scale benchmark's ResNet with 1 and 2 torchrun ranks (1 thread each).

Same data, model and config as ``bench/bench_scale.py`` (synthetic CIFAR-shaped data, the 1.2M-parameter
small ResNet as the user's checkpoint, compressed gradients), run through the real CLI:

    python -m precompute.cli precompute --config scale.toml                          (1 process)
    python -m precompute.cli precompute --config scale.toml --launcher torchrun --nproc 2

and reports, from each run's manifest, the wall time of the store pass (``train_factors``; for 2 ranks
the slower rank, plus the wait for it), the scoring pass (test queries x store chunks), self-influence
and the merge of the ranks' shards, each rank's peak RSS, and the scaling efficiency
``time_1 / (2 * time_2)`` per pass. Both caches are compared (scores and top-k) at the end.

    .venv/bin/python bench/bench_distributed.py --n-train 20000 --n-test 2000 --methods graddot

Run it on a quiet machine: with other processes on the 2 cores the 2-rank run cannot scale.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import make_data, make_model, write_config  # noqa: E402

PASSES = ("fit", "train_factors", "test_scores", "self_influence", "merge")


def run(cfg: Path, cache: Path, nproc: int, budget: str) -> tuple[float, dict]:
    """``(wall s, manifest)`` of one precompute with ``nproc`` single-threaded processes."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "precompute.cli", "precompute", "--config", str(cfg), "--cache-dir", str(cache),
           "--memory-budget", budget, "--device", "cpu", "--overwrite", "--no-progress"]
    if nproc > 1:
        cmd += ["--launcher", "torchrun", "--nproc", str(nproc)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"precompute with {nproc} process(es) failed:\n{out.stderr[-3000:]}")
    return wall, json.loads((cache / cfg.stem / "manifest.json").read_text())


def pass_seconds(entry: dict, name: str) -> float:
    """A pass's seconds: the slowest rank's (the others wait for it), or the single process's."""
    ranks = entry.get("ranks")
    if not ranks:
        return float(entry["timings"].get(name, 0.0))
    return max(float(r["timings"].get(name, 0.0)) for r in ranks)


def same_scores(a: Path, b: Path, methods: list[str]) -> str:
    worst, same_topk = 0.0, True
    for m in methods:
        for name in ("top_proponents", "top_opponents", "train_top_helped", "train_top_hurt"):
            same_topk &= np.array_equal(np.load(a / "methods" / m / f"{name}.npy"), np.load(b / "methods" / m / f"{name}.npy"))
        x = np.load(a / "methods" / m / "top_proponent_scores.npy")
        y = np.load(b / "methods" / m / "top_proponent_scores.npy")
        worst = max(worst, float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-30)))
    return f"top-k indices {'identical' if same_topk else 'DIFFER'}, top scores max relative difference {worst:.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/ie_dist"))
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--methods", default="graddot")
    ap.add_argument("--budget", default="3GB", help="per process")
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--gpus", type=int, default=8, help="for the on-paper GPU estimate")
    args = ap.parse_args()
    methods = args.methods.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / f"data-{args.n_train}"
    make_data(data, args.n_train, args.n_test)
    src, ckpt = make_model(args.out, data, args.train_steps, 1)
    cfg = args.out / "dist.toml"
    write_config(cfg, data, src, ckpt, methods)
    results = {}
    for nproc in (1, 2):
        print(f"[{nproc} rank(s)] running precompute ...", flush=True)
        wall, man = run(cfg, args.out / f"cache-{nproc}", nproc, args.budget)
        results[nproc] = (wall, man)
        print(f"[{nproc} rank(s)] {wall:.0f} s", flush=True)
    print(f"\n## Distributed: SmallResNet, {args.n_train:,} train x {args.n_test:,} test, 1 thread per rank, "
          f"load {os.getloadavg()[0]:.1f}\n")
    print("| method | pass | 1 rank s | 2 ranks s | efficiency t1 / (2 t2) |")
    print("|---|---|---:|---:|---:|")
    per_sample = {}
    for m in methods:
        e1, e2 = results[1][1]["methods"][m], results[2][1]["methods"][m]
        for name in PASSES:
            t1, t2 = pass_seconds(e1, name), pass_seconds(e2, name)
            if name == "train_factors":  # the 2-rank store pass ends when the slower rank's last chunk is in
                t2 = max(float(r["timings"].get("train_factors", 0)) + float(r["timings"].get("store_wait", 0))
                         for r in e2["ranks"])
                per_sample[m] = t1 / args.n_train
            eff = t1 / (2 * t2) if t2 > 0 and name != "merge" else float("nan")
            print(f"| {m} | {name} | {t1:.1f} | {t2:.1f} | {eff:.2f} |")
    w1, w2 = results[1][0], results[2][0]
    print(f"\nwhole run: {w1:.0f} s with 1 rank, {w2:.0f} s with 2 ranks (efficiency {w1 / (2 * w2):.2f}; "
          "training/predictions/embedding run once, on rank 0)")
    for nproc, (_w, man) in results.items():
        line = f"peak RSS with {nproc} rank(s): rank 0 {max(man['peak_rss_mb'].values()):,.0f} MB over the whole run"
        for r, x in enumerate(man["methods"][methods[0]].get("ranks") or []):
            line += f"; rank {r} {x['peak_rss_mb']:,.0f} MB in {methods[0]}"
        print(line + f" (budget {args.budget} per process)")
    print(same_scores(args.out / "cache-1" / cfg.stem, args.out / "cache-2" / cfg.stem, methods))
    for m, sec in per_sample.items():
        # on paper: one CPU thread -> one GPU at the scale benchmark's planned ~15k compressed gradients/s
        # (docs/benchmarks.md, issue 12), the store pass scaling with the number of GPUs
        print(f"{m}: {1 / sec:,.0f} compressed gradients/s per CPU thread; on paper {args.gpus} GPUs at ~15k/s each "
              f"store {args.gpus * 15_000:,}/s: a 1M-sample store in {1e6 / (args.gpus * 15_000):.0f} s")


if __name__ == "__main__":
    main()
