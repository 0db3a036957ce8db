"""Benchmark ``influence-explorer evaluate`` on a bundled sample and check the issue's targets.

    .venv/bin/python bench/bench_evaluate.py                      # digits-logreg, S = 100, all parts
    .venv/bin/python bench/bench_evaluate.py --sample digits --methods exact,cg,ekfac,kfac,trak,tracin,graddot \
        --lds-repeats 3 --no-loo

Builds the sample into ``--cache-dir`` if it is missing, times a cold evaluate (ground truth removed
first unless ``--keep``), prints the per-method table and the targets met. Extra flags are passed to
``evaluate`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "precompute.cli"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", default="digits-logreg")
    ap.add_argument("--cache-dir", default="/tmp/bench_eval_cache")
    ap.add_argument("--keep", action="store_true", help="keep stored ground truth (time a warm re-run)")
    ap.add_argument("--json", help="also write the summary here")
    args, extra = ap.parse_known_args()
    run = Path(args.cache_dir) / args.sample
    if not (run / "manifest.json").is_file():
        print(f"building {run} ...", file=sys.stderr)
        subprocess.run(CLI + ["precompute", "--sample", args.sample, "--cache-dir", args.cache_dir, "--no-progress"],
                       check=True, cwd=ROOT)
    if not args.keep:
        shutil.rmtree(run / "evaluation", ignore_errors=True)
    cmd = CLI + ["evaluate", args.sample, "--cache-dir", args.cache_dir, "--no-progress", *extra]
    print("$ influence-explorer " + " ".join(cmd[3:]), file=sys.stderr)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    res = json.loads((run / "evaluation" / "results.json").read_text())
    lds = {m: r["lds"] for m, r in (res.get("lds") or {}).get("methods", {}).items()}
    loo = {m: r["pearson"] for m, r in (res.get("loo") or {}).get("methods", {}).items()}
    summary = {"sample": args.sample, "wall_s": round(wall, 1), "timings": res.get("timings"),
               "retrained": res.get("last_retrained"), "lds": lds, "loo_pearson": loo}
    print(f"\nwall time (incl. process start): {wall:.1f}s; stage timings: {res.get('timings')}")
    checks = []
    if args.sample == "digits-logreg":
        checks += [("exact LDS >= 0.95", lds.get("exact", -1) >= 0.95),
                   ("exact LOO Pearson >= 0.95", loo.get("exact", -1) >= 0.95),
                   ("evaluate under 120 s", wall < 120)]
        if "cg" in lds:
            checks.append(("cg LDS within 0.02 of exact", abs(lds["cg"] - lds["exact"]) <= 0.02))
    elif lds:
        best = max(lds, key=lds.get)
        checks.append((f"best method LDS >= 0.65 ({best} {lds[best]:.3f})", lds[best] >= 0.65))
        if "ekfac" in lds:
            checks.append((f"ekfac LDS >= 0.45 ({lds['ekfac']:.3f})", lds["ekfac"] >= 0.45))
    for name, ok in checks:
        print(f"  [{'x' if ok else ' '}] {name}")
    summary["checks"] = {n: bool(ok) for n, ok in checks}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
