"""The estimator registry: every module of ``precompute.influence`` is discovered on first use, and
every concrete :class:`~precompute.influence.base.InfluenceEstimator` subclass with a ``name``
registers itself (``__init_subclass__``), so adding a method is one new file.

Everything that lists methods asks here: ``--methods`` validation, ``evaluate`` (which methods to
score, which to sweep over damping), ``--damping from-eval``, the registry-wide tests and the
generated methods table in the README / docs/methods.md (:mod:`precompute.influence.docs`).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from precompute.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from precompute.influence.base import InfluenceEstimator

_REGISTRY: dict[str, type[InfluenceEstimator]] = {}
_discovered = False


def register(cls: type[InfluenceEstimator]) -> type[InfluenceEstimator]:
    """Add ``cls`` under ``cls.name`` (called by ``InfluenceEstimator.__init_subclass__``)."""
    name = cls.name
    held = _REGISTRY.get(name)
    if held is not None and (held.__module__, held.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"influence method name {name!r} is taken by {held.__module__}.{held.__qualname__}; "
                        f"rename {cls.__module__}.{cls.__qualname__}.name")
    _REGISTRY[name] = cls
    return cls


def discover() -> None:
    """Import every public module of ``precompute.influence`` once (their estimators register)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    try:
        for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda i: i.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__package__}.{info.name}")
    except BaseException:
        _discovered = False
        raise


def registered() -> dict[str, type[InfluenceEstimator]]:
    """``{name: estimator class}`` of every method, sorted by name."""
    discover()
    return dict(sorted(_REGISTRY.items()))


def available_methods() -> list[str]:
    return list(registered())


def estimator_class(name: str) -> type[InfluenceEstimator]:
    methods = registered()
    if name not in methods:
        raise ConfigError(f"influence.methods: unknown method {name!r}; known: {list(methods)}")
    return methods[name]


def get_estimator(name: str, options: dict[str, Any] | None = None) -> InfluenceEstimator:
    """A new, unfitted estimator ``name`` with its options (validated by its config class)."""
    return estimator_class(name)(**(options or {}))


def damped_methods(candidates: list[str] | None = None) -> list[str]:
    """The methods (of ``candidates``, default all) whose scores depend on a damping lambda."""
    methods = registered()
    names = list(methods) if candidates is None else candidates
    return [m for m in names if m in methods and methods[m].capabilities.damping is not None]


def check_influence_config(influence: Any) -> None:
    """Validate ``influence.methods`` and ``influence.options`` against the registry (each method's
    options through its config class), so a bad name or option fails before any work starts."""
    methods = registered()
    known = list(methods)
    for m in influence.methods:
        if m not in methods:
            raise ConfigError(f"influence.methods: unknown method {m!r}; known: {known}")
    for m, opts in influence.options.items():
        if m not in methods:
            raise ConfigError(f"influence.options: options for unknown method {m!r}; known: {known}")
        if not isinstance(opts, dict):
            raise ConfigError(f"influence.options.{m}: must be a table of settings (got {opts!r})")
    for m in influence.methods:
        get_estimator(m, influence.options.get(m))
    from precompute.store.compression_choice import compression_config

    compression_config(influence.compression)
