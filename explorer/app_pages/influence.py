"""Influence: one test prediction with its top-k proponents and opponents, or (reverse view) one
training sample with the test predictions it helps and hurts most."""

from __future__ import annotations

import streamlit as st

from cache_format.evaluation import counterfactual_sentence
from cache_format.names import SELF_INFLUENCE, TRAIN_NET_INFLUENCE
from components.cards import card_grid
from components.figures import probability_figure
from explorer import state, ui
from explorer.data import RunView
from explorer.page_spec import PageSpec
from explorer.text import md_escape

PAGE = PageSpec(key="influence", title="Influence", icon=":material/compare_arrows:", order=30,
                params=("run", "test", "train", "method", "k"))

CARDS_PER_ROW = 4


def _default_test(v: RunView) -> int:
    """With nothing selected, start on the first misclassified test point (the interesting ones)."""
    wrong = v.test.index[~v.test["correct"].to_numpy()]
    return int(wrong[0]) if len(wrong) else 0


def _jump() -> None:
    state.select_test(int(st.session_state["w_jump"]))


def header(v: RunView, split: str, index: int, title: str, back_to: int | None = None) -> None:
    """Title, big image, class probabilities and the key facts of one sample (``back_to``: a test
    point to offer a way back to, under the title)."""
    row = v.sample(split, index)
    label, pred = int(row["label"]), int(row["pred"])
    st.title(title)
    if back_to is not None:
        st.button(f"← Back to test #{back_to}", key="back_to_test", on_click=state.select_train_clear)
    c1, c2, c3 = st.columns([1.1, 2.6, 1.5], vertical_alignment="top")
    with c1:
        ui.big_image(v, split, index)
    with c2:
        fig = probability_figure(v.probs[split][index], v.class_names, label, pred)
        st.plotly_chart(fig, width="stretch", config={"displayModeBar": False}, key=f"probs_{split}")
    with c3:
        ok = label == pred
        st.markdown(f"{'True label' if split == 'test' else 'Given label'}: {ui.chip(v, label)}  \n"
                    f"Model predicts: {ui.chip(v, pred)} at {float(row['confidence']):.1%}  \n"
                    f"Loss: {float(row['loss']):.3f}", unsafe_allow_html=True)
        ui.source_file_caption(v, split, index)
        if ok:
            st.success("correct prediction", icon=":material/check_circle:")
        else:
            st.error("misclassified", icon=":material/cancel:")
        if split == "train" and bool(row.get("flipped", False)):
            st.warning(f"label was flipped (original: {md_escape(v.class_names[int(row['original_label'])])})",
                       icon=":material/swap_horiz:")


def test_view(v: RunView, test: int) -> None:
    row = v.sample("test", test)
    label, pred = int(row["label"]), int(row["pred"])
    verdict = "correctly" if label == pred else "wrongly"
    header(v, "test", test, f"Test #{test}: {verdict} predicted {md_escape(v.class_names[pred])}")
    c1, c2, c3 = st.columns([2, 3, 1.2], vertical_alignment="bottom")
    with c1:
        method = ui.method_picker(v)
    with c2:
        k = ui.k_slider(v, method)
    with c3:
        if st.session_state.get("w_jump") != test:
            st.session_state["w_jump"] = test
        st.number_input("Test point", 0, v.n_test - 1, key="w_jump", on_change=_jump)
    st.markdown(ui.SIGN_LINE)
    sentence = counterfactual_sentence(v.run, test, method)
    if sentence:
        st.info(f"**Counterfactual check** (from `influence-explorer evaluate`): {md_escape(sentence)}",
                icon=":material/science:")
    top = v.top(method, test, k)
    name, shown = md_escape(v.class_names[label]), md_escape(method)
    left, right = st.columns(2, gap="large")
    with left:
        st.subheader(f":blue[Proponents]: pushed toward label {name}")
        st.caption(f"Training samples that most lower this test point's loss ({shown}). Click one to open it.")
        card_grid(ui.cards_for(v, "train", top.pro, top.pro_scores, top.scale, "pro", label),
                  CARDS_PER_ROW, on_click=ui.open_train)
    with right:
        st.subheader(f":red[Opponents]: pushed away from label {name}")
        st.caption(f"Training samples that most raise this test point's loss ({shown}).")
        card_grid(ui.cards_for(v, "train", top.opp, top.opp_scores, top.scale, "opp", label),
                  CARDS_PER_ROW, on_click=ui.open_train)


def train_view(v: RunView, train: int) -> None:
    test = state.get_int("test", v.n_test)
    header(v, "train", train, f"Training sample #{train}: which predictions does it drive?", back_to=test)
    c1, c2 = st.columns([2, 4], vertical_alignment="bottom")
    with c1:
        method = ui.method_picker(v)
    with c2:
        k = ui.k_slider(v, method)
    self_inf, self_pct = v.train_stat(method, SELF_INFLUENCE, train)
    net, net_pct = v.train_stat(method, TRAIN_NET_INFLUENCE, train)
    m1, m2, m3 = st.columns(3)
    m1.metric("Self-influence", f"{self_inf:.3g}", help="Influence of the sample on its own loss; high values "
              "flag unusual or mislabelled samples.")
    m1.caption(f"higher than {self_pct:.1f}% of training samples")
    m2.metric("Net influence on the test set", f"{net:+.3g}", help="Mean score over all test points: positive = "
              "helps the test set on average.")
    m2.caption(f"higher than {net_pct:.1f}% of training samples")
    m3.metric("Method", md_escape(method))
    st.markdown(ui.SIGN_LINE)
    rev = v.reverse(method, train, k)
    left, right = st.columns(2, gap="large")
    with left:
        st.subheader(":blue[Helps most]: test points it pushes toward their label")
        card_grid(ui.cards_for(v, "test", rev.pro, rev.pro_scores, rev.scale, "helped"), CARDS_PER_ROW,
                  on_click=state.select_test)
    with right:
        st.subheader(":red[Hurts most]: test points it pushes away from their label")
        card_grid(ui.cards_for(v, "test", rev.opp, rev.opp_scores, rev.scale, "hurt"), CARDS_PER_ROW,
                  on_click=state.select_test)


def main() -> None:
    """The focused test point's view, or the training-sample view when ``?train=`` is set."""
    v = ui.require_view()
    train = state.get_int("train", v.n_train)
    if train is not None:
        train_view(v, train)
        return
    test = state.get_int("test", v.n_test)
    if test is None:
        test = _default_test(v)
        state.select_test(test)
        st.toast(f"No test point selected: showing test #{test}, the first misclassified one.")
    test_view(v, test)

