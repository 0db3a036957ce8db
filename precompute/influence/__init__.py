"""Influence estimators, registered by name for ``--methods``.

Importing this package registers every built-in method; see :mod:`precompute.influence.base` for
the interface and the sign convention (positive score = proponent).
"""

from precompute.influence import exact, gradient_similarity, tracin  # noqa: F401  (registers methods)
from precompute.influence.base import (
    InfluenceEstimator,
    InfluenceTask,
    MethodConfig,
    available_methods,
    get_estimator,
    register,
)

__all__ = [
    "InfluenceEstimator",
    "InfluenceTask",
    "MethodConfig",
    "available_methods",
    "get_estimator",
    "register",
]
