"""The estimator interface every influence method implements, and the task it is fitted on.

Sign convention (everywhere in this project): ``score(t, i) > 0`` means training sample i is a
*proponent* of test point t: up-weighting i lowers the loss of t. For Hessian-based methods,
``score(t, i) = g_t^T (H + lambda I)^-1 g_i`` (the negative of Koh & Liang's I_up,loss).

Life cycle, split so that the expensive part is cacheable and shardable:

1. ``fit(task)``: anything that depends on the training set only (Hessian, factors, projections).
2. ``train_factors(x, y)``: the train-side representation ``[b, d]`` (e.g. gradients g_i).
3. ``query_factors(x, y)``: the test-side representation ``[b, d]`` (e.g. ``(H + lambda I)^-1 g_t``).
4. ``scores(q, t)``: ``[b_test, b_train]``; default ``q @ t.T``.
5. ``self_influence(x, y)``: ``score(i, i)`` for training samples ``[b]``, without an n x n matrix.

Any test batch can be scored against any train chunk, so work splits over processes by rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from precompute.errors import ConfigError, MethodError
from precompute.gradients import LossFn, cross_entropy_loss, per_sample_gradients
from precompute.params import ParamSpace
from precompute.training import Checkpoint

#: ``damping = "auto"`` means lambda = AUTO_DAMPING_SCALE * tr(H) / p (the mean eigenvalue of H),
#: tr(H) estimated by Hutchinson with AUTO_DAMPING_PROBES seeded Rademacher probes (kronfluence's rule).
AUTO_DAMPING_SCALE = 0.1
AUTO_DAMPING_PROBES = 32


def check_damping(value: Any, key: str = "damping") -> None:
    """Raise ConfigError unless ``value`` is a number >= 0 or ``"auto"``."""
    ok = value == "auto" or (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0)
    if not ok:
        raise ConfigError(f"{key}: must be a number >= 0 or \"auto\" (got {value!r})")


@dataclass
class MethodConfig:
    """Base for per-method settings. ``damping=None`` means: use the run's ``influence.damping``;
    a number >= 0 or ``"auto"`` (see :func:`auto_damping`) overrides it for this method."""

    damping: float | str | None = None

    def validate(self) -> MethodConfig:
        if self.damping is not None:
            check_damping(self.damping, "damping")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InfluenceTask:
    """What an estimator is fitted on: the trained model, its training data and recipe.

    ``x_train [n, *input]``, ``y_train [n]``; ``weight_decay`` is the L2 coefficient of the training
    objective; ``checkpoints`` are the snapshots saved during training (oldest first).
    """

    model: nn.Module
    space: ParamSpace
    x_train: torch.Tensor
    y_train: torch.Tensor
    weight_decay: float
    damping: float | str
    checkpoints: list[Checkpoint] = field(default_factory=list)
    batch_size: int = 512
    loss_fn: LossFn = cross_entropy_loss
    progress: Callable[[str, int], Any] | None = None

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    def gradients(self, x: torch.Tensor, y: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Per-sample loss gradients ``[b, p]`` at the final model (or at ``params``)."""
        return per_sample_gradients(self.model, x, y, self.space, self.batch_size, params, self.loss_fn)

    def checkpoint_params(self, ckpt: Checkpoint) -> dict[str, torch.Tensor]:
        dev = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        return {n: ckpt.state_dict[n].to(device=dev, dtype=dtype) for n in self.space.names}


class InfluenceEstimator(ABC):
    """Base class; subclasses set ``name``, ``config_class`` and implement the factor methods."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    #: short description shown in the UI and docs
    summary: ClassVar[str] = ""

    def __init__(self, **options: Any):
        try:
            self.config = self.config_class(**options).validate()
        except TypeError as exc:
            raise ConfigError(f"influence.options.{self.name}: {exc}") from None
        self.task: InfluenceTask | None = None

    def damping_for(self, task: InfluenceTask) -> float:
        """The resolved lambda: the method's own ``damping`` or else the run's; ``"auto"`` -> a number."""
        raw = task.damping if self.config.damping is None else self.config.damping
        return auto_damping(task) if raw == "auto" else float(raw)

    def fit(self, task: InfluenceTask) -> InfluenceEstimator:
        self.task = task
        return self

    def _require_fit(self) -> InfluenceTask:
        if self.task is None:
            raise MethodError(f"{self.name}: call fit(task) before computing factors")
        return self.task

    @abstractmethod
    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Train-side representation ``[b, d]``."""

    @abstractmethod
    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Test-side representation ``[b, d]`` (the cacheable preconditioned measurement gradient)."""

    def scores(self, query: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
        """``[b_test, b_train]``, positive = proponent."""
        return query @ train.T

    def self_influence(self, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor | None = None) -> torch.Tensor:
        """``score(i, i)`` for training samples ``[b]`` (measurement = the training loss itself);
        ``train [b, d]``: their train factors when already computed (skips recomputing them)."""
        t = self.train_factors(x, y) if train is None else train
        return (self.query_factors(x, y) * t).sum(dim=1)

    def fit_info(self) -> dict[str, Any]:
        """Facts about the fit worth recording in the manifest (e.g. eigenvalue range)."""
        return {}


def auto_damping(task: InfluenceTask) -> float:
    """``0.1 * tr(H) / p``: a tenth of the mean eigenvalue of the Hessian H of the training objective.

    tr(H) is estimated by Hutchinson, ``mean_k z_k^T H z_k`` over 32 seeded Rademacher probes (one
    batched HVP pass over the training set), computed once per task and cached on it, so every method
    of a run that resolves ``"auto"`` gets the same lambda. Always > 0 when weight decay is > 0.
    """
    cached = getattr(task, "_auto_damping", None)
    if cached is not None:
        return cached
    from precompute.hessian import create_hvp_function  # late: keeps this module light

    p = task.space.size
    dtype = next(task.model.parameters()).dtype
    gen = torch.Generator().manual_seed(0)
    z = (torch.randint(0, 2, (AUTO_DAMPING_PROBES, p), generator=gen) * 2 - 1).to(dtype)
    z = z.to(task.x_train.device)
    hvp = create_hvp_function(task.model, task.space, task.x_train, task.y_train, task.weight_decay,
                              task.batch_size, loss_fn=task.loss_fn)
    trace = float((z * hvp(z)).sum(dim=1).mean())
    value = AUTO_DAMPING_SCALE * trace / p
    if not value > 0:
        raise MethodError(f"influence.damping = \"auto\": estimated mean Hessian eigenvalue is {trace / p:.3g} "
                          "(not > 0); set influence.damping to an explicit number > 0")
    task._auto_damping = value  # type: ignore[attr-defined]
    return value


_REGISTRY: dict[str, type[InfluenceEstimator]] = {}


def register(cls: type[InfluenceEstimator]) -> type[InfluenceEstimator]:
    """Class decorator: make an estimator available to ``--methods`` under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_estimator(name: str, options: dict[str, Any] | None = None) -> InfluenceEstimator:
    if name not in _REGISTRY:
        raise ConfigError(f"influence.methods: unknown method {name!r}; known: {available_methods()}")
    return _REGISTRY[name](**(options or {}))
