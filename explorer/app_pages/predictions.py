"""Predictions: a filterable, sortable gallery of test predictions; clicking one opens its influence view."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from components.cards import card_grid
from explorer import state, ui
from explorer.data import RunView
from explorer.page_spec import PageSpec

PAGE = PageSpec(key="predictions", title="Predictions", icon=":material/grid_view:", order=20,
                params=("run", "test"))

N_COLS, N_ROWS = 6, 3
PAGE_SIZE = N_COLS * N_ROWS
SORTS = {
    "Least confident first": ("confidence", True),
    "Most confident first": ("confidence", False),
    "Highest loss first": ("loss", False),
    "Test index": ("index", True),
}
OUTCOMES = ("All", "Incorrect", "Correct")


def _reset_page() -> None:
    st.session_state["pf_page"] = 1


def filtered(v: RunView, classes: list[str], outcome: str, conf: tuple[float, float], sort: str) -> pd.DataFrame:
    """Test rows matching the filters, sorted."""
    df = v.test
    mask = df["confidence"].between(conf[0], conf[1])
    if classes:
        ids = [v.class_names.index(c) for c in classes]
        mask &= df["label"].isin(ids)
    if outcome != "All":
        mask &= df["correct"] == (outcome == "Correct")
    col, asc = SORTS[sort]
    return df[mask].sort_values([col, "index"], ascending=[asc, True], kind="stable")


def main() -> None:
    """The filterable gallery of the selected run's test predictions."""
    v = ui.require_view()
    t = v.test
    acc = float(t["correct"].mean()) if len(t) else float("nan")
    st.title("Test predictions")
    st.caption(f"Run **{ui.md_escape(v.name)}**: {v.n_test:,} test points, accuracy {acc:.1%} "
               f"({int((~t['correct']).sum())} misclassified). Click a card to see which training samples drove it.")

    c1, c2, c3, c4 = st.columns([3, 2.6, 2.6, 2], vertical_alignment="bottom")
    classes = c1.multiselect("True class", v.class_names, key="pf_classes", on_change=_reset_page,
                             placeholder="all classes")
    outcome = c2.segmented_control("Prediction", OUTCOMES, default="All", key="pf_outcome",
                                   on_change=_reset_page) or "All"
    conf = c3.slider("Confidence", 0.0, 1.0, (0.0, 1.0), 0.01, key="pf_conf", on_change=_reset_page)
    sort = c4.selectbox("Sort", list(SORTS), key="pf_sort", on_change=_reset_page)

    df = filtered(v, classes, outcome, conf, sort)
    n_pages = max(1, math.ceil(len(df) / PAGE_SIZE))
    page = min(max(1, int(st.session_state.get("pf_page", 1))), n_pages)
    st.session_state["pf_page"] = page
    if df.empty:
        st.info("No test point matches these filters.")
        return
    rows = df.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    cards = [ui.sample_card(v, "test", int(i), key=f"pred_{int(i)}") for i in rows["index"]]
    card_grid(cards, N_COLS, on_click=ui.open_test)

    left, mid, right = st.columns([1, 2, 1], vertical_alignment="center")
    left.button("← Previous", key="pf_prev", disabled=page <= 1, width="stretch",
                on_click=lambda: st.session_state.update(pf_page=page - 1))
    mid.markdown(f"<div style='text-align:center'>page <b>{page}</b> of {n_pages} · {len(df):,} matching</div>",
                 unsafe_allow_html=True)
    right.button("Next →", key="pf_next", disabled=page >= n_pages, width="stretch",
                 on_click=lambda: st.session_state.update(pf_page=page + 1))
    selected = state.get_int("test", v.n_test)
    if selected is not None:
        st.caption(f"Selected: test #{selected} (open the **Influence** page to inspect it).")

