"""Influence Explorer: the Streamlit entry point (``influence-explorer app`` runs this file).

The menu is built from the pages' own declarations (:mod:`explorer.page_spec`): every module in
``explorer/app_pages/`` with a ``PAGE = PageSpec(...)`` and a ``main()`` becomes an ``st.Page`` at
``/<key>``. The selection (run, test point, training sample, method, k) lives in the URL, e.g.
``/influence?run=digits&test=42&method=exact``; ``/?page=<key>&...`` opens a page from a link to ``/``.
"""

from __future__ import annotations

import time

import streamlit as st

from cache_format.runs import CacheProblem
from explorer import page_spec, perf, state, ui
from explorer.help import problem_page


def landing_page(keys: set[str]) -> str:
    """The page a fresh session opens on: ``?page=``, else Influence for a deep-linked sample,
    else Predictions for a named run, else Runs."""
    page = state.get_param("page")
    if page in keys:
        return page
    if state.get_param("test") is not None or state.get_param("train") is not None:
        return "influence"
    return "predictions" if state.get_param("run") is not None else page_spec.HOME


def _opened_at_root() -> bool:
    """Whether the session's first URL had no page path (``/?run=...``); unknown counts as yes."""
    from pathlib import Path
    from urllib.parse import urlparse

    try:
        url = st.context.url
    except Exception:  # noqa: BLE001 - older Streamlit or no browser (AppTest)
        url = None
    return not url or urlparse(url).path.strip("/") in ("", Path(__file__).resolve().parent.name)


def main() -> None:
    started = time.perf_counter()
    st.set_page_config(page_title="Influence Explorer", page_icon=":material/hub:", layout="wide",
                       initial_sidebar_state="collapsed")
    st.html("<style>[data-testid=stMainBlockContainer]{padding-top:3rem}</style>")
    declared = page_spec.discover()
    page_spec.check_params(declared, state.PARAMS)
    state.adopt_url()
    pages = {p.spec.key: page_spec.nav_page(p) for p in declared}
    specs = {p.spec.key: p.spec for p in declared}
    current = st.navigation(list(pages.values()), position="top")
    target = state.pop_goto()
    if "_ie_landed" not in st.session_state:  # a fresh session: honour a deep link opened at "/"
        st.session_state["_ie_landed"] = True
        landing = landing_page(set(pages))
        if current is pages[page_spec.HOME] and landing != page_spec.HOME and _opened_at_root():
            target = landing
    if target in pages and pages[target] is not current:
        st.switch_page(pages[target], query_params=state.params_for(specs[target].params))
    key = next(k for k, p in pages.items() if p is current)
    state.keep_only(specs[key].params)  # the URL holds this page's parameters only
    state.start_run(st.container())  # every invalid URL value, named, at the top of the page
    ui.presenter_style()
    ui.sidebar()
    params = {k: v for k, v in state.url_params().items() if k in specs[key].params}
    try:
        with perf.timed(key, params, started):
            try:
                current.run()
            except CacheProblem as exc:  # a file that went missing after the run was opened and checked
                problem_page(exc)
    finally:
        state.start_run(None)


main()
