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

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from precompute.config import check_damping
from precompute.distributed.context import SINGLE, DistContext
from precompute.errors import ConfigError, MethodError
from precompute.gradients import LossFn, cross_entropy_loss, per_sample_gradients
from precompute.influence.registry import register as _register
from precompute.params import ParamSpace
from precompute.training import Checkpoint

#: ``damping = "auto"`` on the Hessian scale: lambda = max(AUTO_DAMPING_SCALE * tr(H) / p,
#: AUTO_DAMPING_NEGATIVE_MARGIN * |most negative eigenvalue of H|): a tenth of the mean eigenvalue
#: (kronfluence's rule; tr(H) by Hutchinson with AUTO_DAMPING_PROBES seeded Rademacher probes), raised
#: on a non-convex model to twice the most negative eigenvalue (AUTO_DAMPING_LANCZOS Lanczos steps), so
#: H + lambda I is positive definite with a margin. Per-layer methods apply the first part per layer.
AUTO_DAMPING_SCALE = 0.1
AUTO_DAMPING_PROBES = 32
AUTO_DAMPING_LANCZOS = 60
AUTO_DAMPING_NEGATIVE_MARGIN = 2.0


#: what a method's ``damping`` lambda is added to, and so the scale "auto" and a damping sweep refer to
DAMPING_SCALES = {
    "hessian": "the Hessian of the training objective, or a curvature approximating it (K-FAC/EK-FAC "
               "factors, DataInf's per-layer gradient second moments); \"auto\" = max(0.1 x its mean eigenvalue, "
               "2 x |its most negative eigenvalue|), or per layer 0.1 x that layer's mean eigenvalue for the "
               "block-diagonal K-FAC/EK-FAC/DataInf",
    "trak-kernel": "TRAK's projected-gradient Gram matrix Phi^T Phi / n; \"auto\" = 0.1 x its mean eigenvalue",
}


@dataclass(frozen=True)
class Capabilities:
    """What an estimator needs and supports; the registry, ``evaluate``, the docs and the tests read it.

    ``damping``: the key of :data:`DAMPING_SCALES` its lambda is added to, or None (no damping).
    ``needs_checkpoints``: refuses a run without saved checkpoints. ``per_layer``: a block-diagonal
    (per-layer) approximation. ``compressed_store``: can score from a compressed gradient store.
    ``max_params``: the most influence parameters it accepts by default (None: no limit).
    ``exact_spearman``: the mean per-test-point Spearman with ``exact`` its tests require on the tiny
    float64 MLP (None: it estimates another quantity, so it is not compared with ``exact``).
    ``exact_rtol``: relative tolerance to ``exact`` scores for methods that converge to it (None: not one).
    ``needs_evaluation``: fitted to the retrained subsets of an ``evaluate`` cache, so it scores only that
    run's test points and has no self-influence (datamodels).
    """

    damping: str | None = None
    needs_checkpoints: bool = False
    per_layer: bool = False
    compressed_store: bool = False
    max_params: int | None = None
    exact_spearman: float | None = None
    exact_rtol: float | None = None
    needs_evaluation: bool = False

    def __post_init__(self) -> None:
        if self.damping is not None and self.damping not in DAMPING_SCALES:
            raise TypeError(f"Capabilities.damping must be None or one of {sorted(DAMPING_SCALES)} "
                            f"(got {self.damping!r})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    #: ``progress(label, done, total)``: long fits report their steps (e.g. Hessian columns) here
    progress: Callable[[str, int, int], Any] | None = None
    #: a fitted ``precompute.compression.GradientCompressor``: methods that declare
    #: ``capabilities.compressed_store`` then work on compressed gradients (:meth:`features`)
    compressor: Any = None
    #: the built-in trainer's recorded run (``precompute.training.Trajectory``), or None
    trajectory: Any = None
    #: the process group of a torchrun launch: fits that sum statistics over the training set split
    #: its batches by rank (:meth:`fit_batch_starts`) and sum over ranks (:meth:`all_reduce_sum_`)
    dist: DistContext = SINGLE

    def fit_batch_starts(self, batch_size: int) -> range:
        """Start rows of the training batches this process accumulates (all of them in one process)."""
        return self.dist.batch_starts(self.n_train, batch_size)

    def all_reduce_sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum per-rank partial statistics over ranks, in place (identity in one process)."""
        self.dist.all_reduce_sum_(tensors)

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    def gradients(self, x: torch.Tensor, y: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Per-sample loss gradients ``[b, p]`` at the final model (or at ``params``)."""
        return per_sample_gradients(self.model, x, y, self.space, self.batch_size, params, self.loss_fn)

    def features(self, x: torch.Tensor, y: torch.Tensor, params: dict[str, torch.Tensor] | None = None,
                 loss_fn: LossFn | None = None) -> torch.Tensor:
        """Per-sample gradients as gradient-similarity methods see them: compressed ``[b, k]`` when the
        task has a compressor, else exact ``[b, p]`` (for ``loss_fn``, default the task's loss)."""
        fn = loss_fn or self.loss_fn
        if self.compressor is None:
            return per_sample_gradients(self.model, x, y, self.space, self.batch_size, params, fn)
        return self.compressor.compress(self.model, x, y, loss_fn=fn, params=params)

    def checkpoint_params(self, ckpt: Checkpoint) -> dict[str, torch.Tensor]:
        dev = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        return {n: ckpt.state_dict[n].to(device=dev, dtype=dtype) for n in self.space.names}


class InfluenceEstimator(ABC):
    """Base class; subclasses set ``name``, ``summary``, ``capabilities`` (and ``config_class``) and
    implement the factor methods. A concrete subclass with a ``name`` registers itself on definition."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    #: short description shown in the UI and docs
    summary: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: small settings for tiny models (the registry-wide tests, smoke runs); {} = the defaults
    quick_options: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and not inspect.isabstract(cls):
            if not cls.summary:
                raise TypeError(f"{cls.__qualname__}: an influence method needs a one-line summary")
            _register(cls)

    def __init__(self, **options: Any):
        try:
            self.config = self.config_class(**options).validate()
        except TypeError as exc:
            raise ConfigError(f"influence.options.{self.name}: {exc}") from None
        self.task: InfluenceTask | None = None

    def raw_damping(self, task: InfluenceTask) -> float | str:
        """The method's own ``damping`` or else the run's, unresolved (a number or ``"auto"``)."""
        return task.damping if self.config.damping is None else self.config.damping

    def damping_for(self, task: InfluenceTask) -> float:
        """The resolved lambda: the method's own ``damping`` or else the run's; ``"auto"`` -> a number."""
        raw = self.raw_damping(task)
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
    """``max(0.1 * tr(H) / p, 2 * |lambda_min(H)|)``, H the Hessian of the training objective.

    ``0.1 * tr(H) / p`` is a tenth of the mean eigenvalue (tr(H) by Hutchinson, ``mean_k z_k^T H z_k``
    over 32 seeded Rademacher probes: one batched HVP pass). On a non-convex model H has negative
    eigenvalues and that lambda can leave ``H + lambda I`` indefinite (exact/CG then fail, Arnoldi and
    LiSSA degrade); the smallest Ritz value of 60 Lanczos steps (converged on the digits MLP to 2%)
    then sets lambda = 2 x its magnitude, where the measured LDS optimum of exact sits (just above
    -lambda_min; docs/methods.md). Computed once per task and cached on it (``task._auto_damping_info``
    keeps the parts), so every method of a run that resolves ``"auto"`` gets the same lambda.
    """
    cached = getattr(task, "_auto_damping", None)
    if cached is not None:
        return cached
    from precompute.hessian import create_hvp_function  # late: keeps this module light
    from precompute.influence._spectrum import arnoldi_eigs

    p = task.space.size
    dtype = next(task.model.parameters()).dtype
    gen = torch.Generator().manual_seed(0)
    z = (torch.randint(0, 2, (AUTO_DAMPING_PROBES, p), generator=gen) * 2 - 1).to(torch.float64)
    z = z.to(task.x_train.device)
    model_hvp = create_hvp_function(task.model, task.space, task.x_train, task.y_train, task.weight_decay,
                                    task.batch_size, loss_fn=task.loss_fn)

    def hvp(v: torch.Tensor) -> torch.Tensor:  # float64 in and out, the HVP in the model's dtype
        return model_hvp(v.to(dtype)).to(torch.float64)

    trace = float((z * hvp(z)).sum(dim=1).mean())
    lowest = float(arnoldi_eigs(hvp, p, AUTO_DAMPING_LANCZOS, 0, task.x_train.device)[0].min())
    from_mean = AUTO_DAMPING_SCALE * trace / p
    value = max(from_mean, AUTO_DAMPING_NEGATIVE_MARGIN * -lowest)
    if not value > 0:
        raise MethodError(f"influence.damping = \"auto\": estimated mean Hessian eigenvalue is {trace / p:.3g} "
                          "(not > 0); set influence.damping to an explicit number > 0")
    task._auto_damping = value  # type: ignore[attr-defined]
    task._auto_damping_info = {"mean_eigenvalue": trace / p, "lowest_ritz_value": lowest,  # type: ignore[attr-defined]
                               "from_mean": from_mean, "lambda": value}
    return value
