"""Predictions: a filterable, sortable gallery of test predictions; clicking one opens its influence view."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd
import streamlit as st

from components.cards import card_grid
from explorer import state, ui
from explorer.data import RunView
from explorer.page_spec import PageSpec

PAGE = PageSpec(key="predictions", title="Predictions", icon=":material/grid_view:", order=20,
                params=("run", "test", "classes", "outcome", "conf", "sort", "p"))

N_COLS, N_ROWS = 6, 3
PAGE_SIZE = N_COLS * N_ROWS
SORTS = {
    "Least confident first": ("confidence", True),
    "Most confident first": ("confidence", False),
    "Highest loss first": ("loss", False),
    "Test index": ("index", True),
}
#: URL value (``?sort=``) of each sort; the first is the default (left out of the URL)
SORT_KEYS = {"least-confident": "Least confident first", "most-confident": "Most confident first",
             "loss": "Highest loss first", "index": "Test index"}
OUTCOMES = ("All", "Incorrect", "Correct")
#: URL value (``?outcome=``) of each outcome but the default "All"
OUTCOME_KEYS = {"incorrect": "Incorrect", "correct": "Correct"}


@dataclass(frozen=True)
class Filters:
    """The gallery's state, as in the URL: ``classes=3,7&outcome=incorrect&conf=0.2-0.8&sort=loss&p=2``."""

    classes: tuple[int, ...] = ()
    outcome: str = "All"
    conf: tuple[float, float] = (0.0, 1.0)
    sort: str = "Least confident first"
    page: int = 1

    def params(self) -> dict[str, str | None]:
        """The URL parameters of these filters (``None``: the default, left out)."""
        lo, hi = self.conf
        return {"classes": ",".join(str(c) for c in self.classes) or None,
                "outcome": next((k for k, o in OUTCOME_KEYS.items() if o == self.outcome), None),
                "conf": None if (lo, hi) == (0.0, 1.0) else f"{lo:.2f}-{hi:.2f}",
                "sort": next((k for k, o in SORT_KEYS.items() if o == self.sort and k != "least-confident"), None),
                "p": None if self.page == 1 else str(self.page)}


def _conf_from_url() -> tuple[float, float]:
    raw = state.get_param("conf")
    if raw is None:
        return (0.0, 1.0)
    try:
        lo, hi = (float(x) for x in raw.split("-"))
        if 0.0 <= lo <= hi <= 1.0:
            return (round(lo, 2), round(hi, 2))
    except ValueError:
        pass
    state.url_problem("conf", f"URL parameter {ui.md_code('conf=' + raw[:60])} is not a valid confidence range: "
                              "expected two numbers from 0 to 1, low-high (e.g. conf=0.2-0.8). It is ignored.")
    return (0.0, 1.0)


def _classes_from_url(n_classes: int) -> tuple[int, ...]:
    raw = state.get_param("classes")
    if not raw:
        return ()
    parts = raw.split(",")
    good = tuple(dict.fromkeys(int(x) for x in parts if x.isdigit() and int(x) < n_classes))
    if len(good) != len(parts):
        state.url_problem("classes", f"URL parameter {ui.md_code('classes=' + raw[:60])} is not a valid list of "
                                     f"classes: expected class numbers from 0 to {n_classes - 1}, comma-separated. "
                                     + ("Only the valid ones are used." if good else "It is ignored."))
    return good


def from_url(v: RunView) -> Filters:
    """The gallery state in the URL (invalid values are named in a warning and ignored)."""
    outcome = state.get_choice("outcome", OUTCOME_KEYS, "prediction filter")
    sort = state.get_choice("sort", SORT_KEYS, "sort")
    page = state.get_int_in("p", 1, 10**9, what="gallery page")
    return Filters(_classes_from_url(len(v.class_names)), OUTCOME_KEYS.get(outcome or "", "All"),
                   _conf_from_url(), SORT_KEYS.get(sort or "", "Least confident first"), page or 1)


def _widgets_to_url(v: RunView) -> None:
    """Widget callback: the filters as set in the widgets go to the URL (page back to 1)."""
    ss = st.session_state
    f = Filters(tuple(v.class_names.index(c) for c in ss["pf_classes"]), ss["pf_outcome"] or "All",
                tuple(ss["pf_conf"]), ss["pf_sort"], 1)
    state.set_params(**f.params())


def _to_page(f: Filters, page: int) -> None:
    state.set_params(**replace(f, page=page).params())


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

    f = from_url(v)
    ss = st.session_state
    shown = {"pf_classes": [v.class_names[c] for c in f.classes], "pf_outcome": f.outcome, "pf_conf": f.conf,
             "pf_sort": f.sort}
    for key, value in shown.items():  # the widgets show the URL's state (Back / a link / a reload)
        if ss.get(key) != value:
            ss[key] = value
    c1, c2, c3, c4 = st.columns([3, 2.6, 2.6, 2], vertical_alignment="bottom")
    c1.multiselect("True class", v.class_names, key="pf_classes", on_change=_widgets_to_url, args=(v,),
                   placeholder="all classes")
    c2.segmented_control("Prediction", OUTCOMES, key="pf_outcome", on_change=_widgets_to_url, args=(v,))
    c3.slider("Confidence", 0.0, 1.0, step=0.01, key="pf_conf", on_change=_widgets_to_url, args=(v,))
    c4.selectbox("Sort", list(SORTS), key="pf_sort", on_change=_widgets_to_url, args=(v,))

    df = filtered(v, [v.class_names[c] for c in f.classes], f.outcome, f.conf, f.sort)
    n_pages = max(1, math.ceil(len(df) / PAGE_SIZE))
    page = f.page
    if page > n_pages:
        state.url_problem("p", f"URL parameter {ui.md_code(f'p={page}')} is past the last page ({n_pages}) of "
                               "these filters: showing the last page.")
        page = n_pages
    if df.empty:
        st.info("No test point matches these filters.")
        return
    rows = df.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    cards = [ui.sample_card(v, "test", int(i), key=f"pred_{int(i)}") for i in rows["index"]]
    links = ui.test_links()
    card_grid(cards, N_COLS, link=links)

    left, mid, right = st.columns([1, 2, 1], vertical_alignment="center")
    left.button("← Previous", key="pf_prev", disabled=page <= 1, width="stretch", on_click=_to_page,
                args=(f, page - 1))
    mid.markdown(f"<div style='text-align:center'>page <b>{page}</b> of {n_pages} · {len(df):,} matching</div>",
                 unsafe_allow_html=True)
    right.button("Next →", key="pf_next", disabled=page >= n_pages, width="stretch", on_click=_to_page,
                 args=(f, page + 1))
    selected = state.get_int("test", v.n_test)
    if selected is not None:
        st.caption(f"Selected: test #{selected} (open the **Influence** page to inspect it).")

