"""Each influence method's wall time with its defaults on each bundled sample, self-influence included.

Usage: ``.venv/bin/python bench/bench_method_defaults.py [--samples digits-logreg,digits,digits-cnn]
[--methods all] [--threads 2] [--timeout 300]``

For every (sample, method) it runs ``influence-explorer precompute --sample S --methods M --no-mislabels
--out TMP --overwrite --no-progress`` in a fresh process (the sample's own config, the method's
defaults) and reads the method's stage time and its split from the manifest
(``methods.<m>.timings``: fit / train factors / test scores (360 test points) / self-influence
(1,437 training points)) and the process CPU seconds (on a shared, loaded CPU the steadier figure:
the whole process, training and imports included). The target (issue 17) is a stage time under 60 s on 2 cores for every method
on every sample; the last column says whether it is met. A run over ``--timeout`` seconds is killed
and reported. ``datamodels`` is skipped: it is fitted to an ``evaluate`` run's retrained subsets
(``options.datamodels.run``), which a fresh sample run does not have. The environment is passed on:
on a loaded machine ``OMP_WAIT_POLICY=PASSIVE`` keeps 2-thread runs from spin-waiting (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "precompute.cli"]
TARGET_S = 60.0
#: methods that need an input a fresh sample run lacks
SKIPPED = {"datamodels": "needs an evaluate run (options.datamodels.run)"}
SPLIT = ("fit", "train_factors", "test_scores", "self_influence")


def one_run(sample: str, method: str, out: Path, env: dict[str, str], timeout: float) -> dict:
    cmd = [*CLI, "precompute", "--sample", sample, "--methods", method, "--no-mislabels", "--out", str(out),
           "--overwrite", "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"over {timeout:.0f} s (killed)"}
    wall = time.perf_counter() - t0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = before.ru_utime + before.ru_stime  # all children so far; the difference is this one's
    if proc.returncode != 0:
        return {"error": (err.strip().splitlines() or ["failed"])[-1][:120], "cpu_total": cpu}
    manifest = json.loads((out / "manifest.json").read_text())
    info = manifest["methods"][method]
    fit = info.get("fit", {}) if isinstance(info.get("fit"), dict) else {}
    return {"wall": wall, "stage": manifest["timings"][f"influence:{method}"], "timings": info.get("timings", {}),
            "fit": fit, "cpu_total": cpu}


def main() -> None:
    from precompute.influence import available_methods

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", default="digits-logreg,digits,digits-cnn")
    ap.add_argument("--methods", default="all", help="comma-separated, or all (every registered method)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per run before it is killed")
    args = ap.parse_args()
    methods = available_methods() if args.methods == "all" else args.methods.split(",")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "NUMBA_NUM_THREADS": str(args.threads)}
    tmp = Path(tempfile.mkdtemp(prefix="bench-defaults-"))
    print(f"method defaults, {args.threads} threads, `precompute --sample S --methods M --no-mislabels`; "
          f"load average at start {os.getloadavg()[0]:.1f}\n")
    print("| sample | method | stage s | fit | train factors | test scores | self-influence | process wall s "
          "| process CPU s | < 60 s | notes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    cpu_before = 0.0
    for sample in args.samples.split(","):
        for m in methods:
            if m in SKIPPED:
                print(f"| {sample} | {m} | | | | | | | | skipped | {SKIPPED[m]} |", flush=True)
                continue
            r = one_run(sample, m, tmp / "run", env, args.timeout)
            cpu, cpu_before = r.get("cpu_total", cpu_before) - cpu_before, r.get("cpu_total", cpu_before)
            if "error" in r:
                print(f"| {sample} | {m} | | | | | | | | **no** | {r['error']} |", flush=True)
                continue
            t = r["timings"]
            notes = ", ".join(f"{k} {r['fit'][k]}" for k in ("depth", "batch_size", "self_depth") if k in r["fit"])
            ok = "yes" if r["stage"] < TARGET_S else "**no**"
            print(f"| {sample} | {m} | {r['stage']:.2f} | " + " | ".join(f"{t.get(k, 0):.2f}" for k in SPLIT)
                  + f" | {r['wall']:.1f} | {cpu:.1f} | {ok} | {notes} |", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
