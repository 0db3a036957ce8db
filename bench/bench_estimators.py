"""Benchmark every influence method on the digits MLP and CNN; prints one markdown table.

Usage: ``.venv/bin/python bench/bench_estimators.py [--models mlp,cnn] [--methods ...] [--threads 2]``

Per model: train the ``digits`` sample recipe (float32), time per-sample gradients (torch.func vmap vs
the autograd loop reference, measured in the same run), then for each method time ``fit`` + the full
[n_test x n_train] score matrix (360 x 1,437) and sample the peak resident-memory increase (methods
under 1 s: best of ``--repeats`` runs, as ``timeit`` does). Spearman
is the mean per-test-point rank correlation with the reference: ``exact`` when the model has at most
``--exact-max-params`` (4,000) parameters, else converged CG (tol 1e-6, which matches exact in the tests).
Timings on a shared CPU are noisy; re-run when a number looks off.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache_format.metrics import mean_spearman  # noqa: E402
from precompute.config import load_config  # noqa: E402
from precompute.data import load_dataset  # noqa: E402
from precompute.gradients import per_sample_gradients_loop  # noqa: E402
from precompute.influence import InfluenceTask, available_methods, get_estimator  # noqa: E402
from precompute.influence.runner import compute_scores  # noqa: E402
from precompute.models import build_model  # noqa: E402
from precompute.params import ParamSpace, select_parameters  # noqa: E402
from precompute.training import train_model  # noqa: E402
from sample_data import sample_config_path  # noqa: E402

#: settings used here where a method's defaults are sized for a converged, slower run
BENCH_OPTIONS = {"lissa": {"depth": 100, "batch_size": 256}}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Samples RSS every 5 ms in a thread; ``peak`` = max increase over the value at entry (MB)."""

    def __enter__(self) -> PeakRSS:
        self.base, self.peak, self._stop = rss_mb(), 0.0, False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, rss_mb() - self.base)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, rss_mb() - self.base)


def build(arch: str, epochs: int) -> tuple[InfluenceTask, torch.Tensor, torch.Tensor]:
    cfg = load_config(sample_config_path("digits"))
    cfg.model.arch = arch
    cfg.train.epochs = epochs
    cfg.train.checkpoints = min(cfg.train.checkpoints, epochs)
    ds = load_dataset(cfg.data)
    x, y = torch.as_tensor(ds.x_train, dtype=torch.float32), torch.as_tensor(ds.y_train)
    xt, yt = torch.as_tensor(ds.x_test, dtype=torch.float32), torch.as_tensor(ds.y_test)
    model = build_model(cfg.model, ds.input_shape, ds.n_classes)
    result = train_model(model, x, y, cfg.train)
    model.eval()
    space = ParamSpace(model, select_parameters(model, cfg.influence.params))
    task = InfluenceTask(model, space, x, y, cfg.train.weight_decay, cfg.influence.damping,
                         checkpoints=result.checkpoints, batch_size=cfg.influence.train_batch_size)
    return task, xt, yt


def throughput(task: InfluenceTask, n_loop: int, repeats: int = 3) -> tuple[float, float]:
    """Steady-state samples/s of vmap (whole train set, the task's batch size) and of the loop.

    Both are warmed up at the measured shapes first and timed best-of-``repeats``, so one-time
    tracing/allocation costs count for neither.
    """
    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    fast = task.n_train / best(lambda: task.gradients(task.x_train, task.y_train))
    loop = n_loop / best(lambda: per_sample_gradients_loop(task.model, task.x_train[:n_loop],
                                                             task.y_train[:n_loop], task.space))
    return fast, loop


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--methods", default=",".join(available_methods()))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--exact-max-params", type=int, default=4000)
    ap.add_argument("--loop-samples", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5, help="best of N for methods that take under 1 s")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    rows = ["| model | method | wall s (fit + 360x1437 scores) | peak extra RSS MB | per-sample grads/s | x loop |"
            " Spearman vs ref |", "|---|---|---:|---:|---:|---:|---:|"]
    notes = []
    for arch in args.models.split(","):
        t0 = time.perf_counter()
        task, xt, yt = build(arch, args.epochs)
        notes.append(f"{arch}: p = {task.space.size:,}, trained in {time.perf_counter() - t0:.1f} s")
        fast, loop = throughput(task, args.loop_samples)
        rows.append(f"| {arch} | per-sample grads, torch.func vmap | | | {fast:,.0f} | {fast / loop:.1f}x | |")
        rows.append(f"| {arch} | per-sample grads, autograd loop (reference) | | | {loop:,.0f} | 1.0x | |")
        use_exact = task.space.size <= args.exact_max_params
        ref_name = "exact" if use_exact else "cg (tol 1e-6)"
        ref_est = get_estimator("exact") if use_exact else get_estimator("cg", {"tol": 1e-6, "max_iter": 500})
        with PeakRSS() as ref_mem:
            t0 = time.perf_counter()
            ref = compute_scores(ref_est, task, xt, yt)
            ref_seconds = time.perf_counter() - t0
        notes.append(f"{arch}: reference = {ref_name} ({ref_seconds:.1f} s)")
        print(*notes, sep="\n", file=sys.stderr, flush=True)
        times = {}
        for name in args.methods.split(","):
            if name == "exact" and not use_exact:
                rows.append(f"| {arch} | exact | skipped (p > {args.exact_max_params}) | | | | |")
                continue
            if name == "exact":  # the reference run, not repeated
                scores, times[name], mem = ref, ref_seconds, ref_mem
            else:
                times[name] = float("inf")
                for _ in range(args.repeats):  # best of N for the sub-second methods (timeit-style)
                    est = get_estimator(name, BENCH_OPTIONS.get(name))
                    with PeakRSS() as mem:
                        t0 = time.perf_counter()
                        scores = compute_scores(est, task, xt, yt)
                        times[name] = min(times[name], time.perf_counter() - t0)
                    if times[name] > 1.0:
                        break
            rho = mean_spearman(scores, ref)
            label = name + (f" ({', '.join(f'{k}={v}' for k, v in BENCH_OPTIONS[name].items())})"
                            if name in BENCH_OPTIONS else "")
            rows.append(f"| {arch} | {label} | {times[name]:.3g} | {mem.peak:.0f} | | | {rho:.3f} |")
            print(rows[-1], file=sys.stderr, flush=True)
        if "ekfac" in times and "graddot" in times:
            notes.append(f"{arch}: EK-FAC / graddot wall-time ratio = {times['ekfac'] / times['graddot']:.2f}")
    print("\n".join(rows))
    print()
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs visible")
    for n in notes:
        print(f"- {n}")


if __name__ == "__main__":
    main()
