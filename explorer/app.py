"""Influence Explorer: the Streamlit entry point (``influence-explorer app`` runs this file).

Pages are registered with ``st.navigation``; the selection (run, test point, training sample,
method, k) lives in the URL, e.g. ``?run=digits&test=42&method=exact`` opens the influence view.
Pages written by other teams (``pages/review.py``, ``pages/trust.py``) join the menu when present.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from explorer import perf, state, ui

HERE = Path(__file__).resolve().parent

# key -> (file, title, icon); the key is also the page's URL path and the value of ?page=
PAGE_SPECS: dict[str, tuple[str, str, str]] = {
    "runs": ("pages/runs.py", "Runs", ":material/folder_open:"),
    "predictions": ("pages/predictions.py", "Predictions", ":material/grid_view:"),
    "influence": ("pages/influence.py", "Influence", ":material/compare_arrows:"),
    "embedding": ("pages/embedding.py", "Embedding map", ":material/scatter_plot:"),
    "compare": ("pages/compare.py", "Compare methods", ":material/difference:"),
    "review": ("pages/review.py", "Suspected mislabels", ":material/report:"),
    "trust": ("pages/trust.py", "Trust", ":material/verified:"),
}


def landing_page() -> str:
    """The page a fresh session opens on: ``?page=``, else Influence for a deep-linked sample,
    else Predictions for a named run, else Runs."""
    qp = st.query_params
    page = qp.get("page")
    if page in PAGE_SPECS and (HERE / PAGE_SPECS[page][0]).is_file():
        return page
    if "test" in qp or "train" in qp:
        return "influence"
    return "predictions" if "run" in qp else "runs"


def _opened_at_root() -> bool:
    """Whether the session's first URL had no page path (``/?run=...``); unknown counts as yes."""
    from urllib.parse import urlparse

    try:
        url = st.context.url
    except Exception:  # noqa: BLE001 - older Streamlit or no browser (AppTest)
        url = None
    return not url or urlparse(url).path.strip("/") in ("", HERE.name)


def main() -> None:
    st.set_page_config(page_title="Influence Explorer", page_icon=":material/hub:", layout="wide",
                       initial_sidebar_state="collapsed")
    st.html("<style>[data-testid=stMainBlockContainer]{padding-top:3rem}</style>")
    state.sync_query_params()
    pages: dict[str, st.Page] = {}
    for key, (file, title, icon) in PAGE_SPECS.items():
        if (HERE / file).is_file():
            pages[key] = st.Page(file, title=title, icon=icon, url_path=key, default=key == "runs")
    current = st.navigation(list(pages.values()), position="top")
    target = state.pop_goto()
    if "_ie_landed" not in st.session_state:  # a fresh session: honour a deep link opened at "/"
        st.session_state["_ie_landed"] = True
        landing = landing_page()
        if current is pages["runs"] and landing != "runs" and _opened_at_root():
            target = landing
    if target in pages and pages[target] is not current:
        st.switch_page(pages[target], query_params=dict(st.query_params))
    ui.sidebar()
    params = {k: st.query_params[k] for k in state.PARAMS if k in st.query_params}
    with perf.timed(current.url_path or "runs", params):
        current.run()


main()
