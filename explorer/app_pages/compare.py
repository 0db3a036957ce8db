"""Compare methods: the top-k proponents and opponents of two methods for one test point, side by
side, with their overlap and the rank correlation of their scores over all training samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from cache_format.metrics import spearman, topk_overlap, topk_shared
from components.figures import method_scatter_figure
from explorer import state, ui
from explorer.data import RunView, TopK
from explorer.page_spec import PageSpec

PAGE = PageSpec(key="compare", title="Compare methods", icon=":material/difference:", order=50,
                params=("run", "test", "a", "b", "k"))


def _table(v: RunView, ids: np.ndarray, scores: np.ndarray, other: set[int], ref_label: int) -> pd.DataFrame:
    rows = []
    for rank, (i, s) in enumerate(zip(ids, scores, strict=True), start=1):
        r = v.sample("train", int(i))
        rows.append({"rank": rank, "image": v.thumb("train", int(i), 48), "train #": int(i),
                     "label": v.class_names[int(r["label"])], "score": float(s),
                     "in both": "✓" if int(i) in other else "",
                     "label ≠ test": "≠" if int(r["label"]) != ref_label else ""})
    return pd.DataFrame(rows)


COLUMNS = {
    "image": st.column_config.ImageColumn("image", width="small"),
    "score": st.column_config.NumberColumn("score", format="%+.3g"),
}


def _side(v: RunView, name: str, top: TopK, other: TopK, ref_label: int, which: str) -> None:
    ids, sc, oth = (top.pro, top.pro_scores, other.pro) if which == "pro" else (top.opp, top.opp_scores, other.opp)
    st.dataframe(_table(v, ids, sc, {int(x) for x in oth}, ref_label), hide_index=True,
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
        state.select_test(test)
    row = v.sample("test", test)
    label = int(row["label"])
    st.title(f"Compare methods on test #{test}")
    c0, c1, c2, c3 = st.columns([1, 2, 2, 3], vertical_alignment="bottom")
    with c0:
        ui.big_image(v, "test", test, px=96)
    a_default = state.get_param("a") if state.get_param("a") in v.methods else v.methods[0]
    b_default = state.get_param("b") if state.get_param("b") in v.methods else v.methods[1]
    with c1:
        a = ui.bound_select("Method A", v.methods, "a", a_default, "w_cmp_a")
    with c2:
        b = ui.bound_select("Method B", v.methods, "b", b_default, "w_cmp_b")
    with c3:
        k = ui.k_slider(v, a, default=10, key="w_k_cmp", cap=50)
    st.markdown(f"True label {ui.chip(v, label)}, predicted {ui.chip(v, int(row['pred']))} "
                f"({float(row['confidence']):.0%}).", unsafe_allow_html=True)
    ta, tb = v.top(a, test, k), v.top(b, test, k)
    full = v.has_full_rows(a) and v.has_full_rows(b)
    sa, sb = v.score_row(a, test), v.score_row(b, test)
    rho = spearman(sa, sb) if full else float("nan")
    m1, m2, m3 = st.columns(3)
    m1.metric("Proponents shared", f"{topk_shared(ta.pro, tb.pro)} / {len(ta.pro)}",
              help=f"top-k overlap {topk_overlap(ta.pro, tb.pro):.2f}: the share of A's top {len(ta.pro)} also in B's")
    m2.metric("Opponents shared", f"{topk_shared(ta.opp, tb.opp)} / {len(ta.opp)}",
              help=f"top-k overlap {topk_overlap(ta.opp, tb.opp):.2f}: the share of A's top {len(ta.opp)} also in B's")
    m3.metric("Rank correlation (Spearman)", f"{rho:+.2f}" if full else "n/a",
              help=f"over all {v.n_train:,} training samples" if full else
              "this run stores only the top-k scores of a method (influence.store_scores = \"topk\")")
    st.markdown(ui.SIGN_LINE)
    for which, title in (("pro", ":blue[Proponents]"), ("opp", ":red[Opponents]")):
        st.subheader(f"{title}: top {k}")
        left, right = st.columns(2, gap="large")
        with left:
            st.markdown(f"**{ui.md_escape(a)}**")
            _side(v, a, ta, tb, label, which)
        with right:
            st.markdown(f"**{ui.md_escape(b)}**")
            _side(v, b, tb, ta, label, which)
    st.subheader("Every training sample: score under both methods")
    if not full:
        st.info("Not available: this run stores only the top-k scores of "
                f"{ui.md_escape(a if not v.has_full_rows(a) else b)} (influence.store_scores = \"topk\"); rebuild "
                "it with store_scores = \"dense\" for full rows.")
        return
    top_a = np.concatenate([ta.pro, ta.opp])
    top_b = np.concatenate([tb.pro, tb.opp])
    st.plotly_chart(method_scatter_figure(sa, sb, a, b, top_a, top_b), width="stretch", key="cmp_scatter")

