"""Deterministic training with checkpoints.

Objective: mean cross-entropy + ``weight_decay / 2 * ||theta||^2`` (L2 in the loss, so influence
methods differentiate the real objective). ``adam``/``sgd`` train in shuffled minibatches from a
seeded generator; ``lbfgs`` trains full-batch (convex models: reaches the optimum influence assumes).

``x`` may be a tensor or a lazy :class:`~precompute.data.source.SampleArray`: minibatches are then
read (and prefetched) per batch, and the full-batch L-BFGS objective is accumulated over chunks of
:data:`FULL_BATCH_CHUNK` rows, so memory holds one batch, never the dataset.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from precompute.config import TrainConfig
from precompute.data.source import Rows, iter_rows, iter_slices
from precompute.distributed.context import DistContext

#: rows per forward pass when the full-batch objective is accumulated over a lazy ``x``
FULL_BATCH_CHUNK = 1024


@dataclass
class Checkpoint:
    """A snapshot of the model after ``epoch`` epochs; ``lr`` is the learning rate used in that epoch."""

    epoch: int
    lr: float
    state_dict: dict[str, torch.Tensor]


@dataclass
class Trajectory:
    """What the built-in minibatch trainer did, enough to replay it step by step (data value embedding).

    ``initial_state``: the model's state before the first step; per step ``batches[k]`` (training
    indices, int64 ``[b_k]``) and ``lrs[k]`` (the learning rate of that step). ``optimizer`` is ``"sgd"``
    (``momentum``, PyTorch semantics) or ``"adam"`` (``betas``, ``eps``, no decoupled weight decay); the
    L2 term ``weight_decay / 2 ||theta||^2`` is part of every step's objective. Costs one index per sample
    and epoch: recorded only when asked (``train_model(..., record_trajectory=True)``).
    """

    optimizer: str
    initial_state: dict[str, torch.Tensor]
    weight_decay: float
    batches: list[torch.Tensor] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    @property
    def steps(self) -> int:
        return len(self.batches)


@dataclass
class TrainResult:
    checkpoints: list[Checkpoint]
    history: list[dict[str, float]] = field(default_factory=list)
    #: the step-by-step record (``record_trajectory=True`` with sgd/adam), else None
    trajectory: Trajectory | None = None


def l2_penalty(model: nn.Module, weight_decay: float) -> torch.Tensor:
    return 0.5 * weight_decay * sum((p * p).sum() for p in model.parameters() if p.requires_grad)


def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight_decay: float) -> torch.Tensor:
    """Mean cross-entropy over (x, y) plus the L2 term."""
    return nn.functional.cross_entropy(model(x), y) + l2_penalty(model, weight_decay)


def objective_backward(model: nn.Module, x: Rows, y: torch.Tensor, weight_decay: float,
                       chunk: int = FULL_BATCH_CHUNK) -> torch.Tensor:
    """``objective(model, x, y)`` with its gradient accumulated chunk by chunk (``x`` ``[n, ...]`` lazy);
    returns the objective's value (detached). The sum over chunks equals the full batch's up to rounding."""
    n = len(x)
    total = torch.zeros((), dtype=next(model.parameters()).dtype, device=y.device)
    for s, xb in zip(range(0, n, chunk), iter_slices(x, chunk), strict=True):
        part = nn.functional.cross_entropy(model(xb), y[s:s + chunk], reduction="sum") / n
        part.backward()
        total = total + part.detach()
    pen = l2_penalty(model, weight_decay)
    if isinstance(pen, torch.Tensor):
        pen.backward()
        total = total + pen.detach()
    return total


@torch.no_grad()
def evaluate(model: nn.Module, x: Rows, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on (x, y)."""
    losses, correct = [], 0
    for s, xb in zip(range(0, len(x), batch_size), iter_slices(x, batch_size), strict=True):
        logits = model(xb)
        losses.append(nn.functional.cross_entropy(logits, y[s:s + batch_size], reduction="sum"))
        correct += (logits.argmax(1) == y[s:s + batch_size]).sum().item()
    return (torch.stack(losses).sum().item() / max(len(x), 1)), correct / max(len(x), 1)


def _ddp_wrap(model: nn.Module, dist: DistContext) -> nn.Module:
    """``model`` inside DistributedDataParallel (its parameters are shared: training updates ``model``)."""
    ids = [dist.local_rank] if dist.backend == "nccl" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def checkpoint_epochs(epochs: int, n_checkpoints: int) -> list[int]:
    """Evenly spaced epochs (1-based) at which to snapshot, at most one per epoch; includes the last."""
    n = min(n_checkpoints, epochs)
    return sorted({int(round(e)) for e in np.linspace(epochs / n, epochs, n)})


def init_parameters(model: nn.Module, seed: int) -> None:
    """The seeded initialisation every training starts from: ``reset_parameters()`` of each submodule,
    in ``modules()`` order, after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()


def minibatch_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The ``adam`` / ``sgd`` (momentum 0.9) optimizer of the built-in recipe over ``params``."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)


def train_model(
    model: nn.Module,
    x: Rows,
    y: torch.Tensor,
    cfg: TrainConfig,
    x_val: Rows | None = None,
    y_val: torch.Tensor | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    init_seed: int | None = None,
    record_trajectory: bool = False,
    dist: DistContext | None = None,
) -> TrainResult:
    """Train ``model`` in place from a seeded initialisation; return checkpoints and per-epoch metrics.

    ``record_trajectory``: also return the :class:`Trajectory` (batches and learning rates per step) of an
    ``sgd``/``adam`` run (full-batch ``lbfgs`` has none); training itself is unchanged.
    ``dist`` (a torchrun launch, ``train.distributed = "ddp"``): every rank draws the same shuffled
    minibatches and back-propagates its slice of each through DistributedDataParallel, with the loss
    scaled so that the averaged gradient is the whole minibatch's mean (a step whose minibatch has
    fewer rows than ranks is skipped).
    """
    init_parameters(model, cfg.seed if init_seed is None else init_seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.optimizer in ("adam", "sgd"):
        opt: torch.optim.Optimizer = minibatch_optimizer(model.parameters(), cfg)
    else:
        opt = torch.optim.LBFGS(model.parameters(), lr=cfg.lr, max_iter=20, history_size=50,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-14)
    sched = None
    if cfg.lr_schedule == "cosine" and cfg.optimizer != "lbfgs":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    snap_at = set(checkpoint_epochs(cfg.epochs, cfg.checkpoints))
    result = TrainResult(checkpoints=[])
    if record_trajectory and cfg.optimizer in ("sgd", "adam"):
        group = opt.param_groups[0]
        result.trajectory = Trajectory(
            optimizer=cfg.optimizer, weight_decay=cfg.weight_decay,
            initial_state={k: v.detach().clone() for k, v in model.state_dict().items()},
            momentum=float(group.get("momentum", 0.0)), betas=tuple(group.get("betas", (0.9, 0.999))),
            eps=float(group.get("eps", 1e-8)))
    n = len(x)
    ddp = dist is not None and dist.active
    if ddp and cfg.optimizer == "lbfgs":
        raise ValueError("DDP training needs minibatches (optimizer adam or sgd)")
    step_model = _ddp_wrap(model, dist) if ddp else model
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if cfg.optimizer == "lbfgs":
            def closure() -> torch.Tensor:
                opt.zero_grad()
                if not isinstance(x, torch.Tensor):
                    return objective_backward(model, x, y, cfg.weight_decay)
                loss = objective(model, x, y, cfg.weight_decay)
                loss.backward()
                return loss

            opt.step(closure)
            lr_used = cfg.lr
        else:
            perm = torch.randperm(n, generator=gen)
            batches = [perm[s:s + cfg.batch_size] for s in range(0, n, cfg.batch_size)]
            if ddp:
                batches = [b for b in batches if len(b) >= dist.world]
                local = [b.tensor_split(dist.world)[dist.rank] for b in batches]
            else:
                local = batches
            for idx, mine, xb in zip(batches, local, iter_rows(x, local), strict=True):
                if result.trajectory is not None:
                    result.trajectory.batches.append(idx.detach().to("cpu", torch.int64).clone())
                    result.trajectory.lrs.append(float(opt.param_groups[0]["lr"]))
                opt.zero_grad()
                mine = mine.to(y.device)
                if ddp:  # DDP averages over ranks: sum over my rows / batch rows * world = the batch mean
                    ce = nn.functional.cross_entropy(step_model(xb), y[mine], reduction="sum")
                    (ce * (dist.world / len(idx)) + l2_penalty(model, cfg.weight_decay)).backward()
                else:
                    objective(model, xb, y[mine], cfg.weight_decay).backward()
                opt.step()
        lr_used = opt.param_groups[0]["lr"]
        if sched is not None:
            sched.step()
        model.eval()
        train_loss, train_acc = evaluate(model, x, y)
        row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc}
        if x_val is not None and y_val is not None:
            row["test_loss"], row["test_accuracy"] = evaluate(model, x_val, y_val)
        result.history.append(row)
        if on_epoch:
            on_epoch(row)
        if epoch in snap_at:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            result.checkpoints.append(Checkpoint(epoch=epoch, lr=lr_used, state_dict=copy.deepcopy(state)))
    return result
