"""Per-sample gradients: module hooks for standard layers, else ``torch.func`` (functional_call +
vmap(grad)); plus a slow loop reference.

Models made of Linear/Conv2d/eval-BatchNorm and per-sample parameter-free layers in ``nn.Sequential``
containers take the hook path (:mod:`precompute.hooked_gradients`: one forward and one backward of the
summed losses, no ``torch.func``, so no lazy ``import torch._dynamo`` either); anything else, or a
call the hook path cannot do exactly, takes ``vmap(grad)``.

All gradients here are of the *per-sample* loss (cross-entropy of one sample); the weight-decay term
belongs to the training objective (see :mod:`precompute.hessian`), not to any one sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from precompute.hooked_gradients import Unsupported, hook_plan, hooked_gradients
from precompute.params import ParamSpace

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy, ``[b, C], [b] -> [b]``."""
    return nn.functional.cross_entropy(logits, target, reduction="none")


def create_per_sample_loss_function(model: nn.Module, space: ParamSpace, loss_fn: LossFn = cross_entropy_loss):
    """``f(params, x [*input], y []) -> loss []`` for one sample, other parameters frozen."""
    frozen = space.frozen(model)

    def sample_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, {**frozen, **params}, (x.unsqueeze(0),))
        return loss_fn(logits, y.unsqueeze(0)).squeeze(0)

    return sample_loss


def create_per_sample_grad_function(model: nn.Module, space: ParamSpace, loss_fn: LossFn = cross_entropy_loss):
    """``f(params, x [b, *input], y [b], out=None) -> grads [b, p]``; with ``out`` the rows are written
    there (one copy instead of a concatenation per batch). Hooks where :func:`hook_plan` allows (checked
    at every call: a module's train/eval mode may change), else ``vmap(grad(.))``."""
    batched = None

    def vmapped(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                out: torch.Tensor | None) -> torch.Tensor:
        nonlocal batched
        if batched is None:
            batched = vmap(grad(create_per_sample_loss_function(model, space, loss_fn)), in_dims=(None, 0, 0))
        grads = batched(params, x, y)
        if out is None:
            return space.flatten(grads, batch_dims=1)
        return space.flatten_into(grads, out)

    def per_sample_grads(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                         out: torch.Tensor | None = None) -> torch.Tensor:
        owners = hook_plan(model, space)
        if owners is not None:
            ref = next(iter(params.values()))
            dest = out if out is not None else torch.empty(len(x), space.size, dtype=ref.dtype, device=ref.device)
            try:
                return hooked_gradients(model, owners, space, params, x, y, loss_fn, dest)
            except Unsupported:
                pass
        return vmapped(params, x, y, out)

    return per_sample_grads


def per_sample_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    space: ParamSpace,
    batch_size: int = 256,
    params: dict[str, torch.Tensor] | None = None,
    loss_fn: LossFn = cross_entropy_loss,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradients of each sample's loss w.r.t. the parameters in ``space``: ``[n, p]``.

    ``params`` overrides the model's own values (e.g. a checkpoint) without touching the module;
    ``out [n, p]`` (e.g. a column block of a wider matrix) receives the rows in place.
    """
    fn = create_per_sample_grad_function(model, space, loss_fn)
    theta = params if params is not None else space.params(model)
    ref = next(iter(theta.values()))
    if out is None:
        out = torch.empty(len(x), space.size, dtype=ref.dtype, device=ref.device)
    elif tuple(out.shape) != (len(x), space.size):
        raise ValueError(f"out must be [{len(x)}, {space.size}], got {list(out.shape)}")
    for s in range(0, len(x), batch_size):
        fn(theta, x[s:s + batch_size], y[s:s + batch_size], out=out[s:s + batch_size])
    return out


def per_sample_gradients_loop(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, space: ParamSpace, loss_fn: LossFn = cross_entropy_loss
) -> torch.Tensor:
    """Slow reference: one backward pass per sample with autograd. ``[n, p]``."""
    named = dict(model.named_parameters())
    rows = []
    for i in range(len(x)):
        loss = loss_fn(model(x[i:i + 1]), y[i:i + 1]).sum()
        grads = torch.autograd.grad(loss, [named[n] for n in space.names])
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)
