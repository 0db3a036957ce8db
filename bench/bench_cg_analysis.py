"""Why CG is slow on the digits CNN: HVP cost per vector, and CG steps needed, measured on the explicit Hessian.

Usage: ``.venv/bin/python bench/bench_cg_analysis.py [--model cnn] [--threads 2]`` (~2 min on 2 cores).

1. Times ``create_hvp_function`` on 360 random vectors (the test set's size) -> ms per vector.
2. Forms the explicit Hessian H (p HVPs) and the exact Gauss-Newton matrix G (per-sample output
   Jacobians), both with the run's weight decay, then runs dense CG on ``(H + lambda I) s = g_t`` for
   all 360 test gradients: plain, and preconditioned with K-FAC / EK-FAC (the estimators' own
   ``precondition``). Prints, per variant, the steps to reach Spearman 0.99 / 0.999 vs the exact
   solve and relative residual 1e-3, and the Spearman of the exact GGN solve vs the exact H solve.
3. Prints the implied wall time of network CG: steps x 360 x (ms per vector).
4. The same for block CG (``block_cg``, the default) with the test set in one block, in the
   pipeline's batches of 256 + 104, and in batches of 64.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.func import functional_call, jacrev, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_estimators import build, mean_spearman  # noqa: E402

from precompute.hessian import create_hvp_function, explicit_hessian  # noqa: E402
from precompute.influence import get_estimator  # noqa: E402
from precompute.influence.cg import block_cg  # noqa: E402


def dense_pcg(a: torch.Tensor, b: torch.Tensor, score: Callable[[torch.Tensor], float],
              precond: Callable[[torch.Tensor], torch.Tensor] | None, max_iter: int = 300) -> dict[str, int | None]:
    """Steps of (P)CG on ``A X = B`` (rows of ``b``) until Spearman 0.99 / 0.999 and residual 1e-3."""
    x, r = torch.zeros_like(b), b.clone()
    z = precond(r) if precond else r.clone()
    p, rz, bn = z.clone(), (r * z).sum(1), b.norm(dim=1)
    found: dict[str, int | None] = {"spearman>=0.99": None, "spearman>=0.999": None, "residual<=1e-3": None}
    for step in range(1, max_iter + 1):
        ap = p @ a
        alpha = rz / (p * ap).sum(1)
        x += alpha[:, None] * p
        r -= alpha[:, None] * ap
        rho = score(x)
        for key, hit in (("spearman>=0.99", rho >= 0.99), ("spearman>=0.999", rho >= 0.999),
                         ("residual<=1e-3", (r.norm(dim=1) / bn).max() <= 1e-3)):
            if hit and found[key] is None:
                found[key] = step
        if found["residual<=1e-3"] is not None and found["spearman>=0.999"] is not None:
            break
        z = precond(r) if precond else r.clone()
        rz_new = (r * z).sum(1)
        p = z + (rz_new / rz)[:, None] * p
        rz = rz_new
    return found


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    task, xt, yt = build(args.model, 60)
    lam, p = float(task.damping), task.space.size
    hvp = create_hvp_function(task.model, task.space, task.x_train, task.y_train, task.weight_decay,
                              task.batch_size, loss_fn=task.loss_fn)
    v = torch.randn(len(xt), p)
    hvp(v[:8])
    t0 = time.perf_counter()
    hvp(v)
    ms = (time.perf_counter() - t0) / len(v) * 1000
    print(f"{args.model}: p = {p:,}; HVP over {task.n_train:,} samples: {ms:.1f} ms per vector "
          f"({len(v)} vectors, {args.threads} threads)")

    t0 = time.perf_counter()
    h = explicit_hessian(hvp, p, torch.float32, chunk=64).double()
    print(f"explicit Hessian: {time.perf_counter() - t0:.0f} s")
    model, space = task.model, task.space
    frozen, theta = space.frozen(model), space.flatten(space.params(model))
    jac = vmap(jacrev(lambda th, x: functional_call(model, {**frozen, **space.unflatten(th)}, (x[None],))[0]),
               in_dims=(None, 0))(theta, task.x_train).double()  # [n, C, p]
    with torch.no_grad():
        prob = torch.softmax(model(task.x_train), 1).double()
    out_h = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
    eye = torch.eye(p, dtype=torch.float64)
    g = torch.einsum("ncp,ncd,ndq->pq", jac, out_h, jac) / task.n_train + task.weight_decay * eye

    gt = task.gradients(xt, yt).double()
    gtr = task.gradients(task.x_train, task.y_train).double()
    a_h = h + lam * eye
    ref = (torch.linalg.solve(a_h, gt.T).T @ gtr.T).numpy()
    ggn_solve = torch.linalg.solve(g + lam * eye, gt.T).T
    print(f"exact GGN solve vs exact Hessian solve: Spearman {mean_spearman((ggn_solve @ gtr.T).numpy(), ref):.3f}")
    ev = torch.linalg.eigvalsh(a_h)
    print(f"H + lambda I: eigenvalues [{ev[0]:.3g}, {ev[-1]:.3g}], condition {ev[-1] / ev[0]:.0f}, "
          f"{int((ev > 0.1).sum())} above 0.1")

    def score(x: torch.Tensor) -> float:
        return mean_spearman((x @ gtr.T).numpy(), ref)

    print("\n| curvature | preconditioner | steps to Spearman 0.99 | to 0.999 | to residual 1e-3 | "
          "implied network-CG time for 360 test points at 1e-3 |")
    print("|---|---|---:|---:|---:|---:|")
    for name in ("none", "kfac", "ekfac"):
        pre = None
        if name != "none":
            est = get_estimator(name, {}).fit(task)
            pre = est.precondition
        steps = dense_pcg(a_h, gt, score, pre)
        n = steps["residual<=1e-3"]
        implied = f"{n * len(xt) * ms / 1000:.0f} s" if n else "> 300 steps"
        print(f"| Hessian | {name} | {steps['spearman>=0.99']} | {steps['spearman>=0.999']} | {n} | {implied} |")

    print("\nBlock CG (the default, `block_cg`) on the same system, per test batch, to residual 1e-3:\n")
    print("| test batches | steps per batch | HVP vectors | implied network time | Spearman vs exact |")
    print("|---|---|---:|---:|---:|")
    for sizes in ((360,), (256, 104), (64,) * 5 + (40,)):
        parts, steps, start = [], [], 0
        for size in sizes:
            x, st = block_cg(lambda v: v @ a_h, gt[start:start + size], 1e-3, 100)
            parts.append(x)
            steps.append(st["iterations"])
            start += size
        vectors = sum(k * s for k, s in zip(sizes, steps, strict=True))
        print(f"| {' + '.join(map(str, sizes))} | {', '.join(map(str, steps))} | {vectors:,} | "
              f"{vectors * ms / 1000:.0f} s | {score(torch.cat(parts)):.4f} |")


if __name__ == "__main__":
    main()
