"""The k fold models of the out-of-fold retraining trained at once, as one stacked model.

A fold of the digits MLP is 1,080 Adam steps of a 4,810-parameter model: the time is per-step
overhead (autograd, optimizer and module calls), not arithmetic, and the five folds used to pay it
five times (2.1 s of a 7 s CLI run). Here the folds' parameters are stacked (``[k, *shape]``), one
``vmap`` of the model runs every fold's minibatch in one forward pass, and one Adam/SGD step updates
all of them. Both optimizers are elementwise and the loss is a sum of per-fold objectives, so fold
``m``'s slice follows exactly the steps :func:`precompute.training.train_model` takes for it alone:
the same seeded initialisation, the same per-epoch permutations (a generator per fold, seeded as
``train_model`` seeds it), the same learning-rate schedule. Only rounding differs (batched matrix
products), which ``tests/test_mislabels_stacked.py`` bounds in float64.

Only models made of the layers in :data:`STACKABLE` (the built-in architectures) are stacked, with
in-memory inputs and equal minibatch counts per epoch; anything else trains fold by fold as before.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from precompute.config import TrainConfig
from precompute.training import init_parameters, minibatch_optimizer

#: layers whose forward is a pure function of (parameters, input): no buffers, no randomness
STACKABLE = (nn.Sequential, nn.Linear, nn.Conv2d, nn.Flatten, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU,
             nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity)


def can_stack(model: nn.Module, cfg: TrainConfig, x: object, sizes: list[int]) -> bool:
    """Whether :func:`train_stacked` reproduces ``train_model`` for these folds: minibatch optimizer,
    a tensor ``x``, only :data:`STACKABLE` layers, and the same number of minibatches per epoch
    (``sizes``: each fold's training rows)."""
    if cfg.optimizer not in ("adam", "sgd") or not isinstance(x, torch.Tensor) or len(sizes) < 2:
        return False
    if any(type(m) not in STACKABLE for m in model.modules()) or any(True for _ in model.buffers()):
        return False
    return len({math.ceil(n / cfg.batch_size) for n in sizes}) == 1


def train_stacked(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, rows: list[torch.Tensor],
                  cfg: TrainConfig, init_seeds: list[int]) -> None:
    """Train ``models[m]`` in place on ``x[rows[m]], y[rows[m]]`` as
    ``train_model(models[m], x[rows[m]], y[rows[m]], cfg, init_seed=init_seeds[m])`` would (no
    checkpoints, no per-epoch history). ``x`` ``[n, ...]``, ``y`` ``[n]``, ``rows[m]`` int64 ``[n_m]``.
    """
    k = len(models)
    for model, seed in zip(models, init_seeds, strict=True):
        init_parameters(model, seed)
    params, _ = stack_module_state(models)  # {name: [k, *shape]}, leaves requiring grad
    base = models[0]

    def fold_logits(p: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(base, p, (xb,))

    batched = vmap(fold_logits)
    opt = minibatch_optimizer(params.values(), cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs) if cfg.lr_schedule == "cosine" else None
    gens = [torch.Generator().manual_seed(cfg.seed) for _ in range(k)]
    rows = [r.to(x.device) for r in rows]
    b = cfg.batch_size
    for _epoch in range(cfg.epochs):
        perms = [r[torch.randperm(len(r), generator=g).to(r.device)] for r, g in zip(rows, gens, strict=True)]
        for s in range(0, max(len(r) for r in rows), b):
            idx = [p[s:s + b] for p in perms]
            counts = [len(i) for i in idx]
            width = max(counts)
            pad = torch.stack([torch.cat([i, i[:1].expand(width - len(i))]) for i in idx])  # [k, width]
            opt.zero_grad()
            ce = nn.functional.cross_entropy(batched(params, x[pad]).flatten(0, 1), y[pad].flatten(),
                                             reduction="none").view(k, width)
            if len(set(counts)) == 1:
                loss = ce.mean(1).sum()
            else:  # a shorter last batch: its padded rows weigh 0, its mean is over its own rows
                n = torch.tensor(counts, dtype=ce.dtype, device=ce.device)
                valid = torch.arange(width, device=ce.device)[None, :] < n[:, None]
                loss = (torch.where(valid, ce, 0).sum(1) / n).sum()
            loss = loss + 0.5 * cfg.weight_decay * sum((p * p).sum() for p in params.values())
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
    with torch.no_grad():
        for m, model in enumerate(models):
            for name, p in model.named_parameters():
                p.copy_(params[name][m])
