"""Where pages find the configured cache folder, the selected run and the URL state (torch-free).

Contract shared by all pages: the cache folder comes from ``$INFLUENCE_EXPLORER_CACHE`` (set by
``influence-explorer app --cache-dir``), the selected run name lives in the URL (``?run=``), runs
are opened through :func:`open_run` (by name only, memory-mapped, cached across reruns), and URL
parameters are read and written only through this module (:func:`get_param`, :func:`set_param`, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from cache_format.names import MANIFEST
from cache_format.runs import CacheProblem, RunCache, run_dir
from cache_format.validate import open_checked

CACHE_ENV = "INFLUENCE_EXPLORER_CACHE"


def cache_dir() -> Path:
    """The configured cache folder (``$INFLUENCE_EXPLORER_CACHE``, default ``./cache``)."""
    return Path(os.environ.get(CACHE_ENV, "cache")).resolve()


@st.cache_resource(show_spinner=False, max_entries=64)
def _open_run(path: str, version: int) -> RunCache | CacheProblem:
    """The run checked against its manifest (:func:`cache_format.validate.check_run`), or why not;
    a problem is kept too, so a damaged run is not re-checked on every rerun."""
    try:
        return open_checked(path)
    except CacheProblem as exc:
        return exc


def open_run(name: str) -> RunCache:
    """Open run ``name`` (a direct child of :func:`cache_dir`), checked once per version of its folder.

    Raises :class:`cache_format.runs.CacheProblem`: "invalid" for a name that is not a run name
    (``../x``, an absolute path), else missing / incomplete / version / damaged (a file that does
    not match the manifest: missing, truncated, wrong shape, NaN scores, ids out of range, ...).
    """
    got = _checked(run_dir(cache_dir(), name))
    if isinstance(got, CacheProblem):
        raise got
    return got


def _checked(path: Path) -> RunCache | CacheProblem:
    return _open_run(str(path), _version(path))


def _version(path: Path) -> int:
    """A cheap fingerprint of a run folder: the manifest's and its folders' modification times (a
    file replaced, removed or restored changes its folder's time), so a repaired run is re-checked."""
    total = 0
    for p in (path / MANIFEST, path, path / "arrays", path / "methods", path / "mislabels"):
        try:
            total = total * 31 + p.stat().st_mtime_ns
        except OSError:
            total = total * 31
    try:
        with os.scandir(path / "methods") as it:
            for entry in it:
                total = total * 31 + entry.stat().st_mtime_ns
    except OSError:
        pass
    return total


def run_problem(path: Path) -> str | None:
    """Why the run folder ``path`` (a listed run) cannot be opened, or ``None`` when it can."""
    got = _checked(Path(path))
    return got.message if isinstance(got, CacheProblem) else None


def selected_run_name() -> str | None:
    """The run named in the URL (``?run=...``), if any (not validated: :func:`open_run` does that)."""
    return get_param("run")


# --- URL state shared by the explorer's pages -------------------------------------------------
# Every selection lives in the URL so a presenter can bookmark it:
#   ?run=digits&test=42&method=exact          (Influence view of test point 42)
#   ?run=digits&train=7                        (reverse view of training sample 7)
# Page switches clear the browser's query string, so a copy is kept in the session and restored.
# PARAMS is the union of what the pages declare (PageSpec.params); the app checks it at start.

PARAMS = ("run", "test", "train", "method", "k", "color", "a", "b")
_SESSION_KEY = "_ie_params"


def sync_query_params() -> None:
    """Adopt values present in the URL; put back the ones a page switch dropped. Call once per rerun."""
    saved: dict[str, str] = st.session_state.setdefault(_SESSION_KEY, {})
    qp = st.query_params
    for key in PARAMS:
        if key in qp:
            saved[key] = qp[key]
        elif key in saved:
            qp[key] = saved[key]


def url_params() -> dict[str, str]:
    """Every parameter in the URL (for ``st.switch_page`` and timing logs)."""
    return {k: st.query_params[k] for k in st.query_params}


def get_param(key: str) -> str | None:
    """A URL parameter (after :func:`sync_query_params`)."""
    return st.query_params.get(key)


def set_param(key: str, value: object | None) -> None:
    """Set (or with ``None`` remove) a URL parameter, in the URL and in the session copy."""
    saved: dict[str, str] = st.session_state.setdefault(_SESSION_KEY, {})
    if value is None:
        saved.pop(key, None)
        if key in st.query_params:
            del st.query_params[key]
    else:
        saved[key] = str(value)
        st.query_params[key] = str(value)


def get_int(key: str, n: int) -> int | None:
    """An integer URL parameter in ``[0, n)``, or ``None`` when absent or invalid."""
    raw = get_param(key)
    try:
        value = int(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value < n else None


def choose_run(name: str) -> None:
    """Select run ``name`` and drop the selection that belonged to the previous run."""
    set_param("run", name)
    for key in ("test", "train", "method"):
        set_param(key, None)


def select_test(index: int) -> None:
    """Focus test point ``index`` (the influence view leaves any training sample)."""
    set_param("test", int(index))
    set_param("train", None)


def select_train(index: int) -> None:
    """Focus training sample ``index`` (the influence view shows its reverse view)."""
    set_param("train", int(index))


def goto(page: str) -> None:
    """Ask the app to switch to page ``page`` (a ``PageSpec.key``) on the next rerun.

    Usable in widget callbacks, where ``st.switch_page`` is not allowed.
    """
    st.session_state["_ie_goto"] = page


def pop_goto() -> str | None:
    """The page requested with :func:`goto`, once."""
    return st.session_state.pop("_ie_goto", None)


def selected_method(methods: list[str]) -> str:
    """The method in the URL if this run has it, else the run's first method."""
    m = get_param("method")
    return m if m in methods else methods[0]


def select_train_clear() -> None:
    """Leave the training-sample view (back to the focused test point)."""
    set_param("train", None)

