"""Influence: one test prediction with its top-k proponents and opponents, or (reverse view) one
training sample with the test predictions it helps and hurts most."""

from __future__ import annotations

import numpy as np
import streamlit as st

from cache_format.evaluation import counterfactual_sentence
from cache_format.names import SELF_INFLUENCE, TRAIN_NET_INFLUENCE
from cache_format.runs import CacheProblem, build_command
from components.cards import card_grid
from components.prob_bars import probability_bars_html
from explorer import state, ui
from explorer.data import RunView, TopK
from explorer.page_spec import PageSpec
from explorer.text import md_escape

PAGE = PageSpec(key="influence", title="Influence", icon=":material/compare_arrows:", order=30,
                params=("run", "test", "train", "method", "k", "toward"))

CARDS_PER_ROW = 4
#: session key of the label a misclassified point is explained toward ("true" / "predicted")
#: the labels a misclassified point can be explained toward (URL ``toward``)
TOWARD = ("true", "predicted")


def _default_test(v: RunView) -> int:
    """With nothing selected, start on the first misclassified test point (the interesting ones)."""
    wrong = v.test.index[~v.test["correct"].to_numpy()]
    return int(wrong[0]) if len(wrong) else 0


def _jump() -> None:
    state.select_test(int(st.session_state["w_jump"]))


def step_targets(correct: np.ndarray, test: int) -> dict[str, int]:
    """Where the stepping buttons go from test point ``test`` (``correct``: ``[n_test]`` bool): the
    previous / next test point (wrapping) and the next / previous misclassified one (wrapping; the
    point itself when none other is)."""
    n = len(correct)
    wrong = np.flatnonzero(~np.asarray(correct, dtype=bool))
    after, before = wrong[wrong > test], wrong[wrong < test]
    nxt = int(after[0]) if len(after) else int(wrong[0]) if len(wrong) else test
    prv = int(before[-1]) if len(before) else int(wrong[-1]) if len(wrong) else test
    return {"prev": (test - 1) % n, "next": (test + 1) % n, "next_wrong": nxt, "prev_wrong": prv}


def _stepper(v: RunView, test: int) -> None:
    """Previous / next test point (arrow keys) and next / previous misclassified one (M / Shift+M)."""
    go = step_targets(v.test["correct"].to_numpy(), test)
    # one block, not five (st.columns): a lighter page; four equal buttons
    st.html("<style>.st-key-ie_stepper>div{flex:1 1 0!important;min-width:0!important}</style>")
    row = st.container(horizontal=True, gap="medium", key="ie_stepper")
    for key, label, shortcut in (("prev", "← Previous", "left"), ("next", "Next →", "right"),
                                 ("prev_wrong", "↶ Previous misclassified", "shift+m"),
                                 ("next_wrong", "Next misclassified ↷", "m")):
        row.button(label, key=f"step_{key}", shortcut=shortcut, width="stretch", on_click=state.select_test,
                   args=(go[key],), help=f"test #{go[key]}")


def header(v: RunView, split: str, index: int, title: str, back_to: int | None = None) -> None:
    """Title, big image, class probabilities (HTML bars: a plotly chart here was the slowest part of
    the page in the browser) and the key facts of one sample (``back_to``: a test point to offer a
    way back to, under the title)."""
    row = v.sample(split, index)
    label, pred = int(row["label"]), int(row["pred"])
    st.title(title)
    if back_to is not None:
        st.button(f"← Back to test #{back_to}", key="back_to_test", on_click=state.select_train_clear)
    c1, c2, c3 = st.columns([1.1, 2.6, 1.5], vertical_alignment="top")
    with c1:
        ui.big_image(v, split, index)
    c2.html(probability_bars_html(v.probs[split][index], v.class_names, label, pred))
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


def _facts(v: RunView, split: str, index: int) -> str:
    row = v.sample(split, index)
    label, pred = int(row["label"]), int(row["pred"])
    return (f"{'True label' if split == 'test' else 'Given label'}: {ui.chip(v, label)}  \n"
            f"Model predicts: {ui.chip(v, pred)} at {float(row['confidence']):.1%}")


def _controls(v: RunView, test: int, default_k: int) -> tuple[str, int]:
    c1, c2, c3 = st.columns([2, 3, 1.2], vertical_alignment="bottom")
    with c1:
        method = ui.method_picker(v)
    with c2:
        k = ui.k_slider(v, method, default=default_k)
    with c3:
        if st.session_state.get("w_jump") != test:
            st.session_state["w_jump"] = test
        st.number_input("Test point", 0, v.n_test - 1, key="w_jump", on_change=_jump)
    return method, k


def _cards(v: RunView, top: TopK, method: str, label: int, present: bool, predicted: bool = False) -> None:
    """The proponent and opponent cards of ``top`` (toward ``label``: the true one, or the predicted one)."""
    name, shown = md_escape(v.class_names[label]), md_escape(method)
    which = " (the prediction)" if predicted else ""
    loss = f"the loss of label {name}, the model's prediction" if predicted else "this test point's loss"
    left, right = st.columns(2, gap="large")
    with left:
        st.subheader(f":blue[Proponents]: pushed toward label {name}{which}")
        if not present:
            st.caption(f"Training samples that most lower {loss} ({shown}). Click one to open it.")
        card_grid(ui.cards_for(v, "train", top.pro, top.pro_scores, top.scale, "pro", label),
                  CARDS_PER_ROW, on_click=ui.open_train)
    with right:
        st.subheader(f":red[Opponents]: pushed away from label {name}{which}")
        if not present:
            st.caption(f"Training samples that most raise {loss} ({shown}).")
        card_grid(ui.cards_for(v, "train", top.opp, top.opp_scores, top.scale, "opp", label),
                  CARDS_PER_ROW, on_click=ui.open_train)


def _toward_choice() -> str:
    """Which label a misclassified point is explained toward: ``"true"`` (default) or ``"predicted"``
    (the URL's ``toward``, so a bookmark or a slide keeps it; kept while stepping; the tour sets it)."""
    return state.get_choice("toward", TOWARD, "label to explain toward") or "true"


def _toward_toggle(v: RunView, label: int, pred: int) -> None:
    """The toggle between the true label's top-k and the predicted label's (misclassified points only)."""
    names = {"true": f"Toward the true label ({md_escape(v.class_names[label])})",  # labels render markdown
             "predicted": f"Toward the predicted label ({md_escape(v.class_names[pred])})"}
    choice = _toward_choice()
    if st.session_state.get("w_toward") != choice:
        st.session_state["w_toward"] = choice

    def changed() -> None:
        value = st.session_state.get("w_toward") or "true"
        state.set_param("toward", None if value == "true" else value)  # the default stays out of the URL

    st.segmented_control("Explain the prediction", list(names), key="w_toward", format_func=names.get,
                         on_change=changed, help="Proponents toward the predicted label answer \"why did it "
                         "predict that?\": the training samples that pushed the model toward its mistake.")


def _explain(v: RunView, test: int, method: str, k: int, label: int, pred: int, present: bool) -> None:
    """The cards toward the true label, or for a misclassified point chosen so, toward the predicted one."""
    if label == pred or _toward_choice() == "true":
        _cards(v, v.top(method, test, k), method, label, present)
        return
    try:
        got = v.top_predicted(method, test, k)
    except CacheProblem as exc:  # damaged predicted-label arrays: say so, keep the page
        st.warning(exc.message, icon=":material/warning:")
        return
    if got is None:
        st.info(f"Proponents toward the predicted label are not precomputed for this run (method "
                f"{md_escape(method)}). Rebuild it with: `{build_command(v.name)} --overwrite`",
                icon=":material/info:")
        return
    top, toward = got
    _cards(v, top, method, toward, present, predicted=True)


def test_view(v: RunView, test: int) -> None:
    row = v.sample("test", test)
    label, pred = int(row["label"]), int(row["pred"])
    verdict = "correctly" if label == pred else "wrongly"
    title = f"Test #{test}: {verdict} predicted {md_escape(v.class_names[pred])}"
    if ui.presenting():  # one screen: a compact header, then the top 4 + 4 cards; controls below them
        c1, c2 = st.columns([1, 6], vertical_alignment="center")
        with c1:
            ui.big_image(v, "test", test, px=112)
        with c2:
            st.title(title)
            st.markdown(_facts(v, "test", test), unsafe_allow_html=True)
        method = state.selected_method(v.methods)
        hi = max(1, min(24, v.topk_max(method)))
        k = state.get_int_in("k", 1, hi, what="top k for this page") or min(4, hi)
        _explain(v, test, method, k, label, pred, present=True)
        st.caption(f"{ui.SIGN_LINE} Method: {md_escape(method)}.")
        if label != pred:  # below the cards: they stay above the fold
            _toward_toggle(v, label, pred)
        _stepper(v, test)
        return
    header(v, "test", test, title)
    _stepper(v, test)
    method, k = _controls(v, test, 8)
    st.markdown(ui.SIGN_LINE)
    sentence = counterfactual_sentence(v.run, test, method)
    if sentence:
        st.info(f"**Counterfactual check** (from `influence-explorer evaluate`): {md_escape(sentence)}",
                icon=":material/science:")
    if label != pred:
        _toward_toggle(v, label, pred)
    _explain(v, test, method, k, label, pred, present=False)


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
        if state.get_param("test") is None:  # nothing selected: the default goes in the URL
            state.set_param("test", test)
        st.caption(f"No valid test point in the URL: showing test #{test}, the first misclassified one.")
    test_view(v, test)
