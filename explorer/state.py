"""Where pages find the configured cache folder, the selected run and the URL state (torch-free).

Contract shared by all pages: the cache folder comes from ``$INFLUENCE_EXPLORER_CACHE`` (set by
``influence-explorer app --cache-dir``), the selected run name lives in the URL (``?run=``), runs
are opened through :func:`open_run` (by name only, memory-mapped, cached across reruns), and URL
parameters are read and written only through this module (:func:`get_param`, :func:`set_param`, ...).
"""

from __future__ import annotations

import os
import threading
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
# Every selection lives in the URL so a presenter can bookmark it and Back / Forward walk through it:
#   ?run=digits&test=42&method=exact          (Influence view of test point 42)
#   ?run=digits&train=7                        (reverse view of training sample 7)
#   ?run=digits&outcome=incorrect&classes=3,7&sort=loss&p=2   (a gallery filter, sort and page)
# The URL holds only the current page's parameters (its PageSpec.params, plus GLOBAL); the session
# keeps a copy of all of them, so a menu switch (which clears the query string) gets them back.
# A URL that names any of the page's parameters (a link, Back / Forward, a card click) is taken as
# it is: what it lacks is not selected. PARAMS is the union of what the pages declare, plus GLOBAL.

#: parameters kept on every page (presenter mode)
GLOBAL = ("present",)
PARAMS = ("run", "test", "train", "method", "k", "toward", "color", "a", "b", "classes", "outcome", "conf", "sort",
          "p", "reviewer", *GLOBAL)
_SESSION_KEY = "_ie_params"
#: session key of the training samples sent from the embedding map to the review queue
REVIEW_SELECTION = "review_selection"
_PROBLEMS_KEY = "_ie_url_problems"
#: what an index parameter counts, for the warning about an invalid value
NOUNS = {"test": "test point", "train": "training sample"}


def _saved() -> dict[str, str]:
    return st.session_state.setdefault(_SESSION_KEY, {})


def adopt_url() -> None:
    """Copy the parameters present in the URL into the session copy (the URL wins). Call first, once
    per rerun, before the landing rule reads them."""
    saved, qp = _saved(), st.query_params
    for key in PARAMS:
        if key in qp:
            saved[key] = qp[key]


def keep_only(declared: tuple[str, ...]) -> None:
    """Make the URL hold exactly the current page's parameters (``declared`` plus :data:`GLOBAL`).

    A URL that names any of them is authoritative (a link, Back / Forward): a declared parameter it
    lacks is dropped from the session copy too, so Back from a training sample returns to the test
    point. A URL with none of them (a menu switch clears the query string) gets the session's
    values back. Parameters of other pages leave the URL but stay in the session copy.
    """
    saved, qp = _saved(), st.query_params
    keys = set(declared) | set(GLOBAL)
    authoritative = any(k in qp for k in declared)
    want: dict[str, str] = {}
    for key in PARAMS:
        if key in keys and key in qp:
            want[key] = saved[key] = qp[key]
        elif key in keys and authoritative and key not in GLOBAL:
            saved.pop(key, None)
        elif key in keys and key in saved:
            want[key] = saved[key]
    if want != {k: qp[k] for k in qp}:
        qp.from_dict(want)


def params_for(declared: tuple[str, ...]) -> dict[str, str]:
    """The session's values of ``declared`` (and :data:`GLOBAL`): the query string of a page switch."""
    keys = set(declared) | set(GLOBAL)
    return {k: v for k, v in _saved().items() if k in keys}


def remembered(key: str) -> str | None:
    """The session's value of ``key``: the URL's on a page that declares it, else the last one seen
    (e.g. the selected test point, for the sidebar of a page without ``test``)."""
    return get_param(key) if key in st.query_params else _saved().get(key)


def url_params() -> dict[str, str]:
    """Every parameter in the URL (for timing logs)."""
    return {k: st.query_params[k] for k in st.query_params}


def get_param(key: str) -> str | None:
    """A URL parameter (after :func:`keep_only`)."""
    return st.query_params.get(key)


def set_params(**values: object | None) -> None:
    """Set (``None``: remove) several URL parameters in one change of the URL, so the browser's
    history gets one entry per selection (Back undoes it), and in the session copy."""
    saved, qp = _saved(), st.query_params
    now = {k: qp[k] for k in qp}
    want = dict(now)
    for key, value in values.items():
        if value is None:
            saved.pop(key, None)
            want.pop(key, None)
        else:
            saved[key] = want[key] = str(value)
    if want != now:
        qp.from_dict(want)


def set_param(key: str, value: object | None) -> None:
    """Set (or with ``None`` remove) one URL parameter (see :func:`set_params`)."""
    set_params(**{key: value})


# --- invalid URL values: a visible warning naming the parameter, never a silent fallback ---------

_SLOT = threading.local()  # the container at the top of the page of this script run (see start_run)


def start_run(slot: object | None) -> None:
    """Forget the previous run's URL problems and show this run's in ``slot`` (a container at the top
    of the page; ``None`` when the run ends). The app calls this around every full rerun."""
    st.session_state[_PROBLEMS_KEY] = {}
    _SLOT.slot = slot


def url_problem(key: str, message: str) -> None:
    """Report that URL parameter ``key`` has an unusable value (``message``, markdown, escaped by the
    caller): a warning at the top of the page, on every rerun while the URL has the value (a page
    that stops early, e.g. to ask a name, still shows it)."""
    problems = st.session_state.setdefault(_PROBLEMS_KEY, {})
    if key in problems:
        return
    problems[key] = message
    slot = getattr(_SLOT, "slot", None)
    if slot is not None:
        slot.warning(message, icon=":material/link_off:")


def url_problems() -> dict[str, str]:
    """The URL problems reported during this rerun, by parameter."""
    return dict(st.session_state.get(_PROBLEMS_KEY, {}))


def _shown(key: str, raw: str) -> str:
    from explorer.text import md_code

    return md_code(f"{key}={raw[:60]}")


def get_int_in(key: str, lo: int, hi: int, what: str | None = None) -> int | None:
    """An integer URL parameter in ``[lo, hi]``; ``None`` when absent, or when invalid (then a
    warning names the parameter and the valid range)."""
    raw = get_param(key)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is not None and lo <= value <= hi:
        return value
    noun = what or NOUNS.get(key, "value")
    span = f"a whole number from {lo} to {hi}" if hi >= lo else "nothing (there are none)"
    url_problem(key, f"URL parameter {_shown(key, raw)} is not a valid {noun}: expected {span}. It is ignored.")
    return None


def get_int(key: str, n: int) -> int | None:
    """An integer URL parameter in ``[0, n)``; ``None`` when absent or invalid (with a warning)."""
    return get_int_in(key, 0, n - 1)


def get_choice(key: str, options: dict[str, str] | list[str], what: str) -> str | None:
    """A URL parameter that must be one of ``options`` (keys of a dict); ``None`` when absent, or when
    invalid (then a warning names the parameter and lists the valid values)."""
    from explorer.text import md_escape

    raw = get_param(key)
    if raw is None or raw in options:
        return raw
    valid = ", ".join(str(o) for o in options)
    url_problem(key, f"URL parameter {_shown(key, raw)} is not a valid {what}: expected one of "
                     f"{md_escape(valid)}. It is ignored.")
    return None


def choose_run(name: str) -> None:
    """Select run ``name`` and drop the selection that belonged to the previous run."""
    set_params(run=name, test=None, train=None, method=None, a=None, b=None, classes=None, p=None)


def select_test(index: int) -> None:
    """Focus test point ``index`` (the influence view leaves any training sample)."""
    set_params(test=int(index), train=None)


def select_train(index: int) -> None:
    """Focus training sample ``index`` (the influence view shows its reverse view)."""
    set_param("train", int(index))


def goto(page: str) -> None:
    """Ask the app to switch to page ``page`` (a ``PageSpec.key``) on the next rerun.

    Usable in widget callbacks, where ``st.switch_page`` is not allowed.
    """
    st.session_state["_ie_goto"] = page


def peek_goto() -> str | None:
    """The page requested with :func:`goto`, left in place."""
    return st.session_state.get("_ie_goto")


def pop_goto() -> str | None:
    """The page requested with :func:`goto`, once."""
    return st.session_state.pop("_ie_goto", None)


def selected_method(methods: list[str]) -> str:
    """The method in the URL if this run has it, else the run's first method (with a warning)."""
    return get_choice("method", methods, "method of this run") or methods[0]


def select_train_clear() -> None:
    """Leave the training-sample view (back to the focused test point)."""
    set_param("train", None)

