"""Shared helpers for the scalable estimators: float64 casting, HVPs of H + lambda I, layer blocks."""

from __future__ import annotations

from collections.abc import Callable

import torch

from precompute.hessian import create_hvp_function
from precompute.influence.base import InfluenceTask

Matvec = Callable[[torch.Tensor], torch.Tensor]


def model_dtype(task: InfluenceTask) -> torch.dtype:
    return next(task.model.parameters()).dtype


def damped_hvp(task: InfluenceTask, lam: float, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
               batch_size: int | None = None) -> Matvec:
    """``V [k, p] float64 -> (H + lam I) V [k, p] float64``; H of the objective on ``(x, y)`` (default: train).

    The HVP itself runs in the model's dtype (torch.func forward-over-reverse, vmapped over the k
    vectors); the iterative solvers keep their state in float64.
    """
    x = task.x_train if x is None else x
    y = task.y_train if y is None else y
    hvp = create_hvp_function(task.model, task.space, x, y, task.weight_decay,
                              batch_size or task.batch_size, loss_fn=task.loss_fn)
    dtype = model_dtype(task)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return hvp(v.to(dtype)).to(torch.float64) + lam * v

    return matvec


def gradients64(task: InfluenceTask, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample loss gradients ``[b, p]`` in float64."""
    return task.gradients(x, y).to(torch.float64)


def as_model_dtype(task: InfluenceTask, t: torch.Tensor) -> torch.Tensor:
    """Factors are returned in the model's dtype (float64 math inside, float32 scores for float32 models)."""
    return t.to(model_dtype(task))


def layer_scores(space_slices: dict[str, slice], query: torch.Tensor, train: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-layer score matrices ``{layer: [b_test, b_train]}`` for factors laid out in ParamSpace order.

    For per-layer (block-diagonal) methods they sum to the total ``query @ train.T``.
    """
    return {name: query[:, s] @ train[:, s].T for name, s in space_slices.items()}
