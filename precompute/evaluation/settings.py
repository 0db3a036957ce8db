"""What ``influence-explorer evaluate`` measures and how big each part is.

Every part can be switched off (``enabled = False``) and sized. The settings that determine a
part's *ground truth* (the retrained models) are hashed into that ground truth's key, so a change
in them never silently reuses stale retraining results.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from precompute.errors import ConfigError

RETRAIN_MODES = ("auto", "warm", "recipe")


def _check(cond: bool, key: str, msg: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"evaluate {key}: {msg} (got {value!r}); fix the matching --{key.replace('.', '-')} flag")


@dataclass
class LDSSettings:
    """Linear datamodeling score: ``subsets`` random subsets of ``fraction`` of the training set,
    ``repeats`` retraining seeds per subset (more for non-convex models), ``bootstrap`` resamples of
    the test points for the interval."""

    enabled: bool = True
    subsets: int = 100
    fraction: float = 0.5
    repeats: int = 1
    bootstrap: int = 1000

    def validate(self) -> None:
        _check(isinstance(self.subsets, int) and self.subsets >= 3, "lds.subsets", "must be an integer >= 3",
               self.subsets)
        _check(0.0 < self.fraction < 1.0, "lds.fraction", "must be in (0, 1)", self.fraction)
        _check(isinstance(self.repeats, int) and self.repeats >= 1, "lds.repeats", "must be an integer >= 1",
               self.repeats)
        _check(isinstance(self.bootstrap, int) and self.bootstrap >= 0, "lds.bootstrap",
               "must be an integer >= 0", self.bootstrap)


@dataclass
class LOOSettings:
    """Leave-one-out: retrain without each of ``points`` sampled training points (meaningful for
    convex models, where retraining converges to a unique optimum)."""

    enabled: bool = True
    points: int = 50

    def validate(self) -> None:
        _check(isinstance(self.points, int) and self.points >= 3, "loo.points", "must be an integer >= 3",
               self.points)


@dataclass
class BrittlenessSettings:
    """Counterfactual removal: for ``tests`` sampled (correctly classified) test points, remove the top-k
    proponents (each k in ``k``) and retrain; compare with removing k random samples ``random`` times.
    ``select``: the ``low-margin`` ones (the model's least confident correct predictions: confident ones
    rarely flip at small k, which makes every method look alike) or ``random`` ones."""

    enabled: bool = True
    tests: int = 10
    select: str = "low-margin"
    k: list[int] = field(default_factory=lambda: [5, 10, 20, 40])
    random: int = 5
    methods: list[str] | None = None  # None: every evaluated method

    def validate(self) -> None:
        _check(isinstance(self.tests, int) and self.tests >= 1, "brittleness.tests", "must be an integer >= 1",
               self.tests)
        _check(bool(self.k) and all(isinstance(k, int) and k >= 1 for k in self.k), "brittleness.k",
               "must be a non-empty list of integers >= 1", self.k)
        _check(isinstance(self.random, int) and self.random >= 0, "brittleness.random",
               "must be an integer >= 0", self.random)
        _check(self.select in ("random", "low-margin"), "brittleness.select", "must be 'random' or 'low-margin'",
               self.select)


@dataclass
class DampingSettings:
    """LDS of each damped method over ``grid`` (lambda values); the best one is recorded and can be used
    by ``precompute --damping from-eval``. Scores are recomputed on at most ``tests`` test points."""

    enabled: bool = True
    grid: list[float] = field(default_factory=lambda: [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    methods: list[str] | None = None  # None: the evaluated methods that use damping
    tests: int = 120

    def validate(self) -> None:
        _check(bool(self.grid) and all(isinstance(v, int | float) and v >= 0 for v in self.grid),
               "damping.grid", "must be a non-empty list of numbers >= 0", self.grid)
        _check(isinstance(self.tests, int) and self.tests >= 5, "damping.tests", "must be an integer >= 5",
               self.tests)


@dataclass
class AgreementSettings:
    """Mean per-test-point Spearman between methods' score rows and top-``k`` proponent overlap."""

    enabled: bool = True
    k: int = 10
    tests: int = 200

    def validate(self) -> None:
        _check(isinstance(self.k, int) and self.k >= 1, "agreement.k", "must be an integer >= 1", self.k)
        _check(isinstance(self.tests, int) and self.tests >= 1, "agreement.tests", "must be an integer >= 1",
               self.tests)


@dataclass
class EvalSettings:
    """All of ``evaluate``. ``methods=None``: the run's methods; names not in the run are computed on
    the run's model. ``workers``: retraining processes (1 thread each); ``threads``: torch threads of the
    main process while evaluate runs (1 by default: small models gain nothing from more, and on a busy
    machine oversubscribed threads slow torch down tenfold). ``retrain``: ``warm`` (converge from the trained model in float64: convex models),
    ``recipe`` (the run's own training recipe from a seeded init), ``auto`` (warm iff convex)."""

    methods: list[str] | None = None
    seed: int = 0
    workers: int = 2
    threads: int = 1
    retrain: str = "auto"
    lds: LDSSettings = field(default_factory=LDSSettings)
    loo: LOOSettings = field(default_factory=LOOSettings)
    brittleness: BrittlenessSettings = field(default_factory=BrittlenessSettings)
    damping: DampingSettings = field(default_factory=DampingSettings)
    agreement: AgreementSettings = field(default_factory=AgreementSettings)
    mislabels: bool = True

    def validate(self) -> EvalSettings:
        _check(isinstance(self.workers, int) and self.workers >= 1, "workers", "must be an integer >= 1",
               self.workers)
        _check(isinstance(self.threads, int) and self.threads >= 1, "threads", "must be an integer >= 1",
               self.threads)
        _check(self.retrain in RETRAIN_MODES, "retrain", f"must be one of {list(RETRAIN_MODES)}", self.retrain)
        _check(isinstance(self.seed, int) and self.seed >= 0, "seed", "must be an integer >= 0", self.seed)
        if self.methods is not None:
            _check(len(self.methods) > 0, "methods", "must name at least one method", self.methods)
        for part in (self.lds, self.loo, self.brittleness, self.damping, self.agreement):
            part.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
