"""Data value embedding's subspace solver: the exact trajectory, adjoint-propagated for r directions.

The exact solver pushes one tangent per training row forward through every step: O(T |B| n p). Its
scores only ever meet the embeddings through a dot product with a gradient at the final model, and
those gradients concentrate in a few directions. So this solver keeps the top-r right singular
directions Q ``[p, r]`` of the training gradients at theta_T (randomised subspace iteration, streamed)
and computes ``Q^T e_z`` for every row z *exactly*: r adjoint vectors, starting at ``Q^T`` on theta_T,
go backward through the exact linearisation of every recorded step (the true batch Hessian by
forward-over-reverse HVPs at the replay's own states, Adam's first and second moments or SGD's momentum
buffer included), and each step hands every sample in its batch ``-d(Q^T theta_T) / d w_z``, the
per-sample gradient of that step dotted with the adjoint. Scores are ``(Q^T g_t) . (Q^T e_z)``: the
exact data value embedding seen through the gradients' dominant subspace (the exact solver's result
when r >= p, tested). Cost: one replay that stores the optimizer states (a temporary ``[T, 3, P]`` file),
r HVPs and r loss JVPs of each step's batch: O(T |B| r p), n / r times less than the exact solver;
memory O(r P + n r).

Adjoint of one Adam step (``m' = b1 m + (1-b1) g``, ``v' = b2 v + (1-b2) g^2``, ``theta' = theta - a m'``
with ``a = c / den``, ``den = sqrt(v' + tiny) / bc2 + eps``), given cotangents (L_theta, L_m, L_v) of
its outputs: ``M = L_m - a L_theta``, ``V = L_v + q L_theta`` with ``q = c m' / (2 bc2 den^2 sqrt(v' + tiny))``,
``K = (1-b1) M + 2 (1-b2) g V``; then ``L_theta <- L_theta + H K``, ``L_m <- b1 M``, ``L_v <- b2 V`` and
``d/dw_z = g_z . K / |B|``. SGD with momentum mu: ``M = L_m - lr L_theta``, K = M, ``L_m <- mu M``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.func import functional_call, grad, jvp, vmap

from precompute.training import objective

if TYPE_CHECKING:
    from precompute.influence.base import InfluenceTask
    from precompute.influence.data_value_embedding import DataValueEmbedding


def gradient_subspace(task: InfluenceTask, rank: int, seed: int, iters: int = 2
                      ) -> tuple[torch.Tensor | None, float]:
    """``(Q [p, r] orthonormal, captured energy)``: the top-r right singular directions of the per-sample
    training gradients at the task's model (randomised subspace iteration with 10 extra columns,
    ``iters + 1`` streamed passes over the gradients), and the fraction of ``sum_z |g_z|^2`` they hold.
    ``(None, 1.0)`` (the identity) when r >= p."""
    p = task.space.size
    if rank >= p:
        return None, 1.0
    k = min(p, rank + 10)
    gen = torch.Generator().manual_seed(seed)
    Y = torch.randn(p, k, generator=gen, dtype=torch.float64).to(task.x_train.device)
    total = 0.0
    for _ in range(iters + 1):
        basis = torch.linalg.qr(Y).Q
        Y = torch.zeros_like(basis)
        total = 0.0
        for s in range(0, task.n_train, task.batch_size):
            G = task.gradients(task.x_train[s:s + task.batch_size], task.y_train[s:s + task.batch_size]).double()
            Y += G.T @ (G @ basis)
            total += float((G * G).sum())
    evals, vecs = torch.linalg.eigh(basis.T @ Y)  # Rayleigh-Ritz in the basis: ascending
    top = vecs[:, -rank:].flip(1)
    return basis @ top, float(evals[-rank:].sum()) / max(total, 1e-300)


def subspace_embeddings(est: DataValueEmbedding, Q: torch.Tensor | None
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``Q^T e_z`` for every training row ``[n, r]`` (model dtype; r = p and Q = I when Q is None) and the
    replay's final parameters ``{name: tensor}``."""
    task = est._require_fit()
    tr = task.trajectory
    assert tr is not None
    dev, dtype = task.x_train.device, est.theta0_.dtype
    P = len(est.theta0_)
    at = _space_positions(est)  # [p]: where task.space's flat entries sit in the P trained parameters
    lam = torch.zeros((task.space.size if Q is None else Q.shape[1], P), dtype=dtype, device=dev)
    if Q is None:
        lam[torch.arange(task.space.size, device=dev), at] = 1
    else:
        lam[:, at] = Q.T.to(dtype)
    model, opt, params = est._replayer()
    with tempfile.TemporaryDirectory(prefix="ie-dve-") as tmp:
        states = np.lib.format.open_memmap(Path(tmp) / "states.npy", mode="w+", dtype=np.float64 if dtype ==
                                           torch.float64 else np.float32, shape=(tr.steps, 3, P))
        for k, idx in enumerate(tr.batches):  # forward: the trainer's own steps; states before each
            states[k] = torch.stack(est._state(opt, params)).cpu().numpy()
            xb, yb = task.x_train[idx.to(dev)], task.y_train[idx.to(dev)]
            opt.param_groups[0]["lr"] = tr.lrs[k]
            opt.zero_grad()
            objective(model, xb, yb, tr.weight_decay).backward()
            opt.step()
        final = {n: prm.detach().clone() for n, prm in params.items()}
        emb = torch.zeros(task.n_train, len(lam), dtype=dtype, device=dev)
        cot = (lam, torch.zeros_like(lam), torch.zeros_like(lam))  # (L_theta, L_m, L_v) [r, P]
        for k in range(tr.steps - 1, -1, -1):  # backward: the adjoint through each exact step
            idx = tr.batches[k].to(dev)
            state = torch.from_numpy(np.asarray(states[k])).to(dev)
            cot, dw = _adjoint_step(est, k, task.x_train[idx], task.y_train[idx], state, cot)
            emb.index_add_(0, idx, -dw.T)  # e_z = d theta_T / d(-w_z)
        del states
    return emb, final


def _space_positions(est: DataValueEmbedding) -> torch.Tensor:
    task = est._require_fit()
    offsets, start = {}, 0
    for name, numel in zip(est.names_, est.numels_, strict=True):
        offsets[name] = start
        start += numel
    return torch.cat([torch.arange(offsets[n], offsets[n] + k) for n, k in zip(task.space.names, task.space.numels,
                                                                                 strict=True)]).to(task.x_train.device)


def _adjoint_step(est: DataValueEmbedding, k: int, xb: torch.Tensor, yb: torch.Tensor, state: torch.Tensor,
                  cot: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                  ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cotangents before step k from those after it (rows ``[r, P]``) and ``d/dw [r, |B|]``."""
    task = est._require_fit()
    tr = task.trajectory
    theta, m, v = state[0], state[1], state[2]
    w = torch.ones(len(yb), dtype=theta.dtype, device=theta.device)
    g = grad(est._objective)(theta, xb, yb, w)
    l_theta, l_m, l_v = cot
    lr = tr.lrs[k]
    if tr.optimizer == "sgd":
        M = l_m - lr * l_theta
        K, V = M, l_v
        beta_m, beta_v = tr.momentum, 0.0
    else:
        b1, b2 = tr.betas
        t = k + 1
        m2 = b1 * m + (1 - b1) * g
        v2 = b2 * v + (1 - b2) * g * g
        c, bc2 = lr / (1 - b1 ** t), (1 - b2 ** t) ** 0.5
        root = (v2 + torch.finfo(g.dtype).tiny).sqrt()
        den = root / bc2 + tr.eps
        M = l_m - (c / den) * l_theta
        V = l_v + (c * m2 / (2 * bc2 * den * den * root)) * l_theta
        K = (1 - b1) * M + (2 * (1 - b2)) * g * V
        beta_m, beta_v = b1, b2

    def both(t_: torch.Tensor):  # (gradient of the step objective, per-sample losses / |B|)
        per = task.loss_fn(functional_call(task.model, {**est.buffers_, **est._unflat(t_)}, (xb,)), yb)
        return grad(est._objective)(t_, xb, yb, w), per / len(yb)

    def one(direction: torch.Tensor):
        return jvp(both, (theta,), (direction,))[1]

    chunk = est._chunk(len(yb))
    hk, dw = [], []
    for s in range(0, len(K), chunk):
        a, b = vmap(one)(K[s:s + chunk])
        hk.append(a.detach())
        dw.append(b.detach())
    return (l_theta + torch.cat(hk), beta_m * M, beta_v * V), torch.cat(dw)
