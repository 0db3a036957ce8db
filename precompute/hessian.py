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


#: activation floats one vmapped HVP call may touch (vectors x samples x activations per sample); sized
#: from the digits MLP/CNN on 2 CPU cores, where per-vector cost is lowest at 8-16 M (cache-resident)
HVP_WORK_BUDGET = 12_000_000


def activation_size(model: nn.Module, x1: torch.Tensor) -> int:
    """Number of activation values one sample produces: the summed output sizes of the leaf modules
    (the model's output if it has none), for ``x1 [1, *input]``."""
    leaves = [m for m in model.modules() if next(m.children(), None) is None] or [model]
    total = 0

    def count(_m, _args, out):
        nonlocal total
        total += sum(t.numel() for t in (out if isinstance(out, tuple | list) else (out,)) if isinstance(t, torch.Tensor))

    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in handles:
            h.remove()
    return max(total, 1)


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

    Forward-over-reverse (``jvp`` of ``grad``), vmapped over the vectors, summed over data batches.
    The k vectors go through in chunks sized so that chunk x batch x activations per sample stays
    near ``HVP_WORK_BUDGET`` (one vmapped call over all of them thrashes the cache: 2x slower on the
    digits CNN, and its peak memory grows with k). Cost per call: ``ceil(n / batch_size) *
    ceil(k / chunk)`` vmapped forward+backward passes.
    """
    objective = create_batch_objective_function(model, space, loss_fn)
    theta0 = space.flatten(space.params(model)) if theta is None else theta
    n = len(x)
    g = grad(objective)

    def batch_hvp(v: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return jvp(lambda t: g(t, xb, yb), (theta0,), (v,))[1]

    multi = vmap(batch_hvp, in_dims=(0, None, None))
    chunk = max(1, HVP_WORK_BUDGET // (min(batch_size, max(n, 1)) * activation_size(model, x[:1])))

    def hvp(v: torch.Tensor) -> torch.Tensor:
        squeeze = v.dim() == 1
        vv = v.unsqueeze(0) if squeeze else v
        out = weight_decay * vv.clone()
        for c in range(0, len(vv), chunk):
            for s in range(0, n, batch_size):
                out[c:c + chunk] += multi(vv[c:c + chunk], x[s:s + batch_size], y[s:s + batch_size]) / n
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
