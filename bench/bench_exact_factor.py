"""exact's factorisation: Cholesky + whitening + Lanczos vs the previous eigh + explicit inverse.

Usage: ``.venv/bin/python bench/bench_exact_factor.py [--p 4810] [--threads 1]``

Both paths in the same process on one seeded p x p float64 SPD matrix (the benchmark MLP's size),
then scores for 360 x 1,437 seeded "gradients" and the 1,797 self-influences; prints wall and CPU
seconds, the ratio, the largest relative score difference and the Lanczos extremes vs ``eigh``'s.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precompute.influence.exact import extreme_eigenvalues  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--p", type=int, default=4810)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p, lam = args.p, 0.01
    g = torch.Generator().manual_seed(0)
    a = torch.randn(p, 2 * p, generator=g, dtype=torch.float64)
    H = a @ a.T / (2 * p)
    G = torch.randn(1797, p, generator=g, dtype=torch.float64)
    t, c = time.perf_counter(), cpu()
    ev, V = torch.linalg.eigh(H)
    inv = (V / (ev + lam)) @ V.T
    s_old = G[:360] @ inv @ G[360:].T
    si_old = ((G @ inv) * G).sum(1)
    old = (time.perf_counter() - t, cpu() - c)
    t, c = time.perf_counter(), cpu()
    A = H.clone()
    A.diagonal().add_(lam)
    L = torch.linalg.cholesky(A)
    W = torch.linalg.solve_triangular(L, G.T, upper=False).T
    s_new = W[:360] @ W[360:].T
    si_new = (W * W).sum(1)

    def solve(v: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, v.T, upper=False), upper=True).T

    lo, hi = extreme_eigenvalues(H, solve, lam)
    new = (time.perf_counter() - t, cpu() - c)
    print(f"p={p}, {args.threads} thread(s)")
    print(f"eigh + inverse:       wall {old[0]:.1f} s, CPU {old[1]:.1f} s")
    print(f"cholesky + lanczos:   wall {new[0]:.1f} s, CPU {new[1]:.1f} s  (ratio new/old CPU {new[1] / old[1]:.3f})")
    print(f"max relative difference: scores {float((s_new - s_old).abs().max() / s_old.abs().max()):.2e}, "
          f"self-influence {float(((si_new - si_old).abs() / si_old.abs()).max()):.2e}")
    print(f"lanczos min/max {lo:.12g} / {hi:.8g}; eigh {float(ev[0]):.12g} / {float(ev[-1]):.8g}")


if __name__ == "__main__":
    main()
