"""The training objective, its Hessian-vector products, and the explicit Hessian.

Objective over the selected parameters theta (others frozen):
``J(theta) = (1/n) sum_i loss_i(theta) + weight_decay / 2 * ||theta||^2``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from precompute.gradients import LossFn, cross_entropy_loss
from precompute.params import ParamSpace


def create_batch_objective_function(model: nn.Module, space: ParamSpace, loss_fn: LossFn = cross_entropy_loss):
    """``f(theta_flat [p], x [b, ...], y [b]) -> sum of losses over the batch`` (a scalar)."""
    frozen = space.frozen(model)

    def objective(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, {**frozen, **space.unflatten(theta)}, (x,))
        return loss_fn(logits, y).sum()

    return objective


def create_hvp_function(
    model: nn.Module,
    space: ParamSpace,
    x: torch.Tensor,
    y: torch.Tensor,
    weight_decay: float,
    batch_size: int = 512,
    theta: torch.Tensor | None = None,
    loss_fn: LossFn = cross_entropy_loss,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``hvp(V [k, p]) -> H V [k, p]`` for the Hessian H of the full training objective J at ``theta``.

    Forward-over-reverse (``jvp`` of ``grad``), vmapped over the k vectors, summed over data batches.
    Cost per call: ``ceil(n / batch_size)`` batched forward+backward passes.
    """
    objective = create_batch_objective_function(model, space, loss_fn)
    theta0 = space.flatten(space.params(model)) if theta is None else theta
    n = len(x)
    g = grad(objective)

    def batch_hvp(v: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return jvp(lambda t: g(t, xb, yb), (theta0,), (v,))[1]

    multi = vmap(batch_hvp, in_dims=(0, None, None))

    def hvp(v: torch.Tensor) -> torch.Tensor:
        squeeze = v.dim() == 1
        vv = v.unsqueeze(0) if squeeze else v
        out = weight_decay * vv.clone()
        for s in range(0, n, batch_size):
            out += multi(vv, x[s:s + batch_size], y[s:s + batch_size]) / n
        return out.squeeze(0) if squeeze else out

    return hvp


def explicit_hessian(hvp: Callable[[torch.Tensor], torch.Tensor], p: int, dtype: torch.dtype,
                     device: torch.device | str = "cpu", chunk: int = 128,
                     progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Form H ``[p, p]`` column block by column block from HVPs with identity columns; symmetrised."""
    H = torch.empty(p, p, dtype=dtype, device=device)
    eye = torch.eye(p, dtype=dtype, device=device)
    for s in range(0, p, chunk):
        H[s:s + chunk] = hvp(eye[s:s + chunk])
        if progress:
            progress(min(chunk, p - s))
    return 0.5 * (H + H.T)
