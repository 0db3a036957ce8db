"""The cache's format layer: the one place both halves of Influence Explorer meet (no torch).

precompute writes a run with these names and helpers; the explorer, ``evaluate`` and user code read
it through them. Nothing here imports torch, precompute or explorer.

- :mod:`cache_format.names`: every file and folder name, format versions, :func:`is_safe_name`
- :mod:`cache_format.runs`: :func:`run_dir` (runs by name only), manifest validation, :class:`RunCache`
- :mod:`cache_format.validate`: a run's files checked against its manifest (:func:`check_run`)
- :mod:`cache_format.mislabels`: suspected-mislabel rankings, detection metrics, their reader
- :mod:`cache_format.evaluation`: the trust evaluation's results (LDS, LOO, damping, ...)
- :mod:`cache_format.metrics`: rank correlation and top-k overlap, defined once
- :mod:`cache_format.atomic`: crash-safe file and folder writes
"""

from cache_format.names import FORMAT_VERSION, SIGN_CONVENTION, is_safe_name

#: names re-exported from :mod:`cache_format.runs`, imported on first use (it needs pandas: ~70 MB and
#: 0.3 s that a precompute worker importing only ``cache_format.names`` does not pay)
_FROM_RUNS = ("CacheProblem", "RunCache", "RunSummary", "build_command", "list_runs", "read_manifest", "run_dir")


def __getattr__(name: str):
    if name in _FROM_RUNS:
        from cache_format import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'cache_format' has no attribute {name!r}")


__all__ = ["FORMAT_VERSION", "SIGN_CONVENTION", "CacheProblem", "RunCache", "RunSummary", "build_command",
           "is_safe_name", "list_runs", "read_manifest", "run_dir"]
