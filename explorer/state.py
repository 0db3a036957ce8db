"""Where pages find the configured cache folder and the selected run (torch-free).

Contract shared by all pages: the cache folder comes from ``$INFLUENCE_EXPLORER_CACHE`` (set by
``influence-explorer app --cache-dir``), the selected run name lives in ``st.query_params["run"]``,
and runs are opened through :func:`open_run` (memory-mapped, cached across reruns).
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from explorer.cache import RunCache

CACHE_ENV = "INFLUENCE_EXPLORER_CACHE"


def cache_dir() -> Path:
    """The configured cache folder (``$INFLUENCE_EXPLORER_CACHE``, default ``./cache``)."""
    return Path(os.environ.get(CACHE_ENV, "cache")).resolve()


@st.cache_resource(show_spinner=False)
def _open_run(path: str, mtime: float) -> RunCache:
    return RunCache(path)


def open_run(name: str) -> RunCache:
    """Open run ``name`` under :func:`cache_dir`; cached until its manifest changes.

    Raises :class:`explorer.cache.CacheProblem` for a missing/incomplete/unknown-version run.
    """
    path = cache_dir() / name
    manifest = path / "manifest.json"
    mtime = manifest.stat().st_mtime if manifest.exists() else 0.0
    return _open_run(str(path), mtime)


def selected_run_name() -> str | None:
    """The run named in the URL (``?run=...``), if any."""
    return st.query_params.get("run")
