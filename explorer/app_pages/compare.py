"""Compare methods: the top-k proponents and opponents of two methods for one test point, side by
side, with their overlap and the rank correlation of their scores over all training samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from cache_format.metrics import spearman
from components.compare_figures import (
    agreement,
    method_scatter_figure,
    overlap_counts,
    sign_overlap,
)
from explorer import state, ui
from explorer.data import RunView, TopK
from explorer.page_spec import PageSpec

PAGE = PageSpec(key="compare", title="Compare methods", icon=":material/difference:", order=50,
                params=("run", "test", "a", "b", "k"))


def _table(v: RunView, ids: np.ndarray, scores: np.ndarray, other: TopK, which: str, other_name: str,
           ref_label: int) -> pd.DataFrame:
    rows = []
    for rank, (i, s) in enumerate(zip(ids, scores, strict=True), start=1):
        r = v.sample("train", int(i))
        rows.append({"rank": rank, "image": v.thumb("train", int(i), 48), "train #": int(i),
                     "label": v.class_names[int(r["label"])], "score": float(s),
                     f"in {other_name}": agreement(int(i), other.pro, other.opp, which),
                     "label ≠ test": "≠" if int(r["label"]) != ref_label else ""})
    return pd.DataFrame(rows)


COLUMNS = {
    "image": st.column_config.ImageColumn("image", width="small"),
    "score": st.column_config.NumberColumn("score", format="%+.3g"),
}


def _side(v: RunView, name: str, top: TopK, other: TopK, other_name: str, ref_label: int, which: str) -> None:
    ids, sc = (top.pro, top.pro_scores) if which == "pro" else (top.opp, top.opp_scores)
    st.dataframe(_table(v, ids, sc, other, which, other_name, ref_label), hide_index=True,
                 width="stretch", column_config=COLUMNS, key=f"cmp_{which}_{name}")


def main() -> None:
    """Two methods' top-k lists for one test point, their overlap and rank correlation."""
    v = ui.require_view()
    if len(v.methods) < 2:
        st.title("Compare methods")
        st.info(f"Run **{ui.md_escape(v.name)}** has a single method ({ui.md_escape(v.methods[0])}); build it "
                "with two or more to compare.")
        return
    test = state.get_int("test", v.n_test)
    if test is None:
        test = int(v.test.index[~v.test["correct"].to_numpy()][0]) if (~v.test["correct"]).any() else 0
        if state.get_param("test") is None:  # nothing selected (an invalid value stays, with its warning)
            state.set_param("test", test)
    row = v.sample("test", test)
    label = int(row["label"])
    st.title(f"Compare methods on test #{test}")
    c0, c1, c2, c3 = st.columns([1, 2, 2, 3], vertical_alignment="bottom")
    with c0:
        ui.big_image(v, "test", test, px=96)
    a_default = state.get_choice("a", v.methods, "method of this run") or v.methods[0]
    b_default = state.get_choice("b", v.methods, "method of this run") or next(m for m in v.methods if m != a_default)
    with c1:
        a = ui.bound_select("Method A", v.methods, "a", a_default, "w_cmp_a")
    with c2:
        b = ui.bound_select("Method B", v.methods, "b", b_default, "w_cmp_b")
    with c3:
        k = ui.k_slider(v, a, default=10, key="w_k_cmp", cap=50)
    st.markdown(f"True label {ui.chip(v, label)}, predicted {ui.chip(v, int(row['pred']))} "
                f"({float(row['confidence']):.0%}).", unsafe_allow_html=True)
    if a == b:
        st.error(f"Method A and method B are both {ui.md_code(a)}: a method always agrees with itself. Pick two "
                 "different methods to compare.", icon=":material/block:")
        return
    ta, tb = v.top(a, test, k), v.top(b, test, k)
    full = v.has_full_rows(a) and v.has_full_rows(b)
    sa, sb = v.score_row(a, test), v.score_row(b, test)
    rho = spearman(sa, sb) if full else float("nan")
    ov = sign_overlap(ta.pro, ta.opp, tb.pro, tb.opp)
    counts = overlap_counts(ov, len(ta.pro), len(ta.opp))
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Proponents shared", counts["Proponents shared"],
              help=f"proponents in both top-{len(ta.pro)} lists (same sign)")
    m2.metric("Opponents shared", counts["Opponents shared"],
              help=f"opponents in both top-{len(ta.opp)} lists (same sign)")
    m3.metric("Opposite sign", counts["Opposite sign"],
              help="training samples that are a proponent under one method and an opponent under the other: "
                   "a disagreement, not agreement")
    m4.metric("Rank correlation (Spearman)", f"{rho:+.2f}" if full else "n/a",
              help=f"over all {v.n_train:,} training samples" if full else
              "this run stores only the top-k scores of a method (influence.store_scores = \"topk\")")
    if ov.opposite:
        st.warning(f"{len(ov.opposite)} training sample(s) change sign between the methods (proponent in one, "
                   f"opponent in the other): train #{', #'.join(str(i) for i in ov.opposite)}.",
                   icon=":material/swap_vert:")
    st.markdown(ui.SIGN_LINE)
    for which, title in (("pro", ":blue[Proponents]"), ("opp", ":red[Opponents]")):
        st.subheader(f"{title}: top {k}")
        left, right = st.columns(2, gap="large")
        with left:
            st.markdown(f"**{ui.md_escape(a)}**")
            _side(v, a, ta, tb, b, label, which)
        with right:
            st.markdown(f"**{ui.md_escape(b)}**")
            _side(v, b, tb, ta, a, label, which)
    st.subheader("Every training sample: score under both methods")
    if not full:
        st.info("Not available: this run stores only the top-k scores of "
                f"{ui.md_escape(a if not v.has_full_rows(a) else b)} (influence.store_scores = \"topk\"); rebuild "
                "it with store_scores = \"dense\" for full rows.")
        return
    st.plotly_chart(method_scatter_figure(sa, sb, a, b, ta.pro, ta.opp, tb.pro, tb.opp), width="stretch",
                    key="cmp_scatter")
