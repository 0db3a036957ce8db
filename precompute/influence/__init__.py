"""Influence estimators, registered by name for ``--methods``.

Importing this package registers every built-in method; see :mod:`precompute.influence.base` for
the interface and the sign convention (positive score = proponent).
"""

from precompute.influence import (  # noqa: F401  (registers methods)
    arnoldi,
    cg,
    datainf,
    exact,
    gradient_similarity,
    kfac,
    lissa,
    representer,
    tracin,
    trak,
)
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
