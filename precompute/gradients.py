"""Per-sample gradients with ``torch.func`` (functional_call + vmap(grad)), plus a slow loop reference.

All gradients here are of the *per-sample* loss (cross-entropy of one sample); the weight-decay term
belongs to the training objective (see :mod:`precompute.hessian`), not to any one sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

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
    """``f(params, x [b, *input], y [b], out=None) -> grads [b, p]`` via ``vmap(grad(.))``; with ``out``
    the rows are written there (one copy instead of a concatenation per batch)."""
    sample_grad = grad(create_per_sample_loss_function(model, space, loss_fn))
    batched = vmap(sample_grad, in_dims=(None, 0, 0))

    def per_sample_grads(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                         out: torch.Tensor | None = None) -> torch.Tensor:
        grads = batched(params, x, y)
        if out is None:
            return space.flatten(grads, batch_dims=1)
        return space.flatten_into(grads, out)

    return per_sample_grads


def per_sample_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    space: ParamSpace,
    batch_size: int = 256,
    params: dict[str, torch.Tensor] | None = None,
    loss_fn: LossFn = cross_entropy_loss,
) -> torch.Tensor:
    """Gradients of each sample's loss w.r.t. the parameters in ``space``: ``[n, p]``.

    ``params`` overrides the model's own values (e.g. a checkpoint) without touching the module.
    """
    fn = create_per_sample_grad_function(model, space, loss_fn)
    theta = params if params is not None else space.params(model)
    ref = next(iter(theta.values()))
    out = torch.empty(len(x), space.size, dtype=ref.dtype, device=ref.device)
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
