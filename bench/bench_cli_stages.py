"""Wall time per stage of a whole CLI run (default: the digits sample with graddot).

Usage: ``.venv/bin/python bench/bench_cli_stages.py [--runs 3] [--threads 2] [--methods graddot]
[--sample digits] [--cold] [--no-mislabels]``

Runs ``influence-explorer precompute --sample S --methods M --out TMP --overwrite --no-progress`` in
fresh processes, ``--runs`` times, and prints the process wall and CPU time (imports included; on a
shared, overloaded CPU the CPU time is the steadier figure; it includes the map's helper process), the manifest's
per-stage timings and each method's split (fit / train factors / test scores / self-influence).
``--cold`` points the first run at an empty numba cache (``NUMBA_CACHE_DIR``): the first run on a
machine, which compiles UMAP's kernels; the later runs reuse that cache (the normal case). Only the
runs after the first count for the "warm" median. Timings on a shared CPU are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "precompute.cli"]


def one_run(out: Path, args: argparse.Namespace, env: dict[str, str]) -> dict:
    cmd = [*CLI, "precompute", "--sample", args.sample, "--methods", args.methods, "--out", str(out),
           "--overwrite", "--no-progress"] + (["--no-mislabels"] if args.no_mislabels else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"precompute failed:\n{proc.stderr.read()[-2000:] if proc.stderr else status}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "stages": manifest["timings"],
            "methods": {m: info.get("timings", {}) for m, info in manifest["methods"].items()},
            "embedding": manifest.get("embedding", {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="graddot")
    ap.add_argument("--sample", default="digits")
    ap.add_argument("--cold", action="store_true", help="first run with an empty numba cache")
    ap.add_argument("--no-mislabels", action="store_true")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "NUMBA_NUM_THREADS": str(args.threads)}
    tmp = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    if args.cold:
        env["NUMBA_CACHE_DIR"] = str(tmp / "numba")
    runs = [one_run(tmp / "run", args, env) for _ in range(args.runs)]
    print(f"`precompute --sample {args.sample} --methods {args.methods}`, {args.threads} threads, "
          f"{args.runs} runs ({'first with an empty numba cache' if args.cold else 'numba cache as found'})\n")
    stages = list(runs[0]["stages"])
    print("| run | process wall s | process CPU s | " + " | ".join(stages) + " |")
    print("|---|---|---|" + "---|" * len(stages))
    for i, r in enumerate(runs):
        print(f"| {i + 1} | {r['wall']:.1f} | {r['cpu']:.1f} | "
              + " | ".join(f"{r['stages'].get(s, 0):.2f}" for s in stages) + " |")
    warm = runs[1:] or runs
    print(f"| median of runs 2.. | {statistics.median(r['wall'] for r in warm):.1f} | "
          f"{statistics.median(r['cpu'] for r in warm):.1f} | "
          + " | ".join(f"{statistics.median(r['stages'].get(s, 0) for r in warm):.2f}" for s in stages) + " |")
    emb = [r["embedding"] for r in warm]
    if emb and all(e.get("mode") == "background" for e in emb):
        print(f"\nembedding drawn in the background: layout {statistics.median(e['worker_seconds'] for e in emb):.2f} s "
              f"in the helper process, of which the embedding stage waited "
              f"{statistics.median(e['waited_seconds'] for e in emb):.2f} s (process CPU includes the helper)")
    for m in runs[0]["methods"]:
        parts = {k: statistics.median(r["methods"][m].get(k, 0) for r in warm) for k in runs[0]["methods"][m]}
        print(f"\n{m}: " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))


if __name__ == "__main__":
    main()
