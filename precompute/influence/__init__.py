"""Influence estimators, one module each, found by the registry (:mod:`precompute.influence.registry`).

A module here that defines a concrete :class:`InfluenceEstimator` subclass with a ``name`` adds that
method everywhere (``--methods``, ``evaluate``, the damping sweep, the registry-wide tests); see
:mod:`precompute.influence.base` for the interface, the capabilities and the sign convention
(positive score = proponent).
"""

from precompute.influence.base import (
    Capabilities,
    InfluenceEstimator,
    InfluenceTask,
    MethodConfig,
)
from precompute.influence.registry import (
    available_methods,
    damped_methods,
    estimator_class,
    get_estimator,
    registered,
)

__all__ = [
    "Capabilities",
    "InfluenceEstimator",
    "InfluenceTask",
    "MethodConfig",
    "available_methods",
    "damped_methods",
    "estimator_class",
    "get_estimator",
    "registered",
]
