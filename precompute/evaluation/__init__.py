"""Built-in evaluation of attribution quality: how far to trust each method's scores on this run.

``evaluate_run(run, EvalSettings(...))`` retrains the run's own model with its own recipe and seed
(in a process pool) and measures, per influence method: the linear datamodeling score (LDS),
leave-one-out agreement, counterfactual brittleness (does removing the top proponents flip the
prediction?), damping sensitivity, and agreement between methods. Results and the retrained ground
truth go to ``<run>/evaluation/`` (read by :mod:`cache_format.evaluation`). See docs/evaluation.md.

Names are imported lazily so that ``precompute.evaluation.cli`` (argument parsing) stays torch-free.
Scripts that call :func:`evaluate_run` with ``workers > 1`` need the usual ``if __name__ == "__main__":``
guard (worker processes are spawned).
"""

from __future__ import annotations

from typing import Any

from precompute.evaluation.settings import (
    AgreementSettings,
    BrittlenessSettings,
    DampingSettings,
    EvalSettings,
    LDSSettings,
    LOOSettings,
)

__all__ = [
    "AgreementSettings",
    "BrittlenessSettings",
    "DampingSettings",
    "EvalSettings",
    "EvaluationResult",
    "LDSSettings",
    "LOOSettings",
    "evaluate_run",
]


def __getattr__(name: str) -> Any:
    if name in ("evaluate_run", "EvaluationResult"):
        from precompute.evaluation import api

        return getattr(api, name)
    raise AttributeError(f"module 'precompute.evaluation' has no attribute {name!r}")
