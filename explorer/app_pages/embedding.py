"""Embedding map: the precomputed UMAP of train + test, coloured by class or by signed influence
on the selected test point. Click a point to select it; lasso or box to list samples. Beside the
map, a strip of thumbnails (plotly cannot show images in its hover label): the selected point and
its nearest neighbours on the map (numbered there), or the first samples of a box / lasso."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pandas as pd
import streamlit as st

from components.cards import card_grid
from components.figures import (
    embedding_figure,
    is_click,
    nearest_ids,
    overlay_traces,
    preview_ids,
    preview_trace,
    selected_ids,
    with_overlay,
    zoom_box,
)
from explorer import state, ui
from explorer.data import RunView
from explorer.page_spec import PageSpec

PAGE = PageSpec(key="embedding", title="Embedding map", icon=":material/scatter_plot:", order=40,
                params=("run", "test", "train", "method", "k", "color"))

COLOR_MODES = {"class": "Class", "influence": "Influence on the selected test point"}
MAX_LISTED = 300
ZOOM = "_emb_zoom"  # session: the visible area (x0, x1, y0, y1) after "Zoom to selection"
STRIP = 8  # thumbnails beside the map



def _figure(v: RunView, mode: str, method: str, test: int | None, k: int, around: list[int] | None = None):
    """Big layer (cached per run for class colours) + small overlay for the selection (+ the numbered
    rings of the thumbnail strip's points, ``around``: global ids)."""
    if mode == "influence" and test is not None:
        base = v.memo_last("emb_infl", (method, test), lambda: embedding_figure(v.embedding, v.all_labels, v.n_train, v.class_names,
                                                    scores=v.score_row(method, test)))
    else:
        base = v.memo("emb_class", lambda: embedding_figure(v.embedding, v.all_labels, v.n_train, v.class_names))
    zoom = st.session_state.get(ZOOM)
    rings = [preview_trace(v.embedding, around, v.n_train)] if around else []
    if test is None:
        return base if zoom is None and not rings else with_overlay(base, rings, zoom)
    top = v.top(method, test, k)
    row = v.sample("test", test)
    label = f"test #{test}: true {v.class_names[int(row['label'])]}, pred {v.class_names[int(row['pred'])]}"
    return with_overlay(base, overlay_traces(v.embedding, v.n_train, v.n_train + test, top.pro, top.opp, label)
                        + rings, zoom)


def _open_global(n_train: int, g: int) -> None:
    """Card callback: open global id ``g`` (a test point or a training sample) on the influence view."""
    (ui.open_test if g >= n_train else ui.open_train)(g - n_train if g >= n_train else g)


def _strip(v: RunView, ids: list[int], title: str, scores=None) -> None:
    """Clickable thumbnails of global ids ``ids`` (numbered 1..n), two per row."""
    st.markdown(f"**{title}**")
    cards = []
    top = float(abs(scores).max()) if scores is not None and len(scores) else 0.0
    scale = top if top > 0 else 1.0
    for n, g in enumerate(ids):
        split, idx = ("test", g - v.n_train) if g >= v.n_train else ("train", g)
        score = float(scores[g]) if scores is not None and split == "train" else None
        card = ui.sample_card(v, split, idx, key=f"embstrip_{n}_{g}", score=score, scale=scale)
        cards.append(replace(card, value=int(g), button=f"{n + 1} · {split} #{idx}"))
    card_grid(cards, 2, partial(_open_global, v.n_train), image_px=72)


def _listing(v: RunView, ids: list[int], scores=None) -> pd.DataFrame:
    """The selected samples, most influential first when ``scores`` (``[n_train]``) are given, else in
    id order; at most :data:`MAX_LISTED` rows."""
    ids = sorted(ids, key=lambda g: (-abs(float(scores[g])) if scores is not None and g < v.n_train else 0.0, g))
    rows = []
    for g in ids[:MAX_LISTED]:
        split, idx = ("test", g - v.n_train) if g >= v.n_train else ("train", g)
        r = v.sample(split, idx)
        row = {"image": v.thumb(split, idx, 48), "split": split, "index": idx,
               "label": v.class_names[int(r["label"])], "pred": v.class_names[int(r["pred"])],
               "confidence": float(r["confidence"]),
               "score": float(scores[idx]) if scores is not None and split == "train" else None}
        file = v.source_file(split, idx)
        if file is not None:
            row["file"] = file
        rows.append(row)
    return pd.DataFrame(rows)


def ids_csv(v: RunView, ids: list[int]) -> str:
    """The selection as CSV: ``split,index`` per selected sample (global ids split back)."""
    lines = ["split,index"] + [f"test,{g - v.n_train}" if g >= v.n_train else f"train,{g}" for g in sorted(ids)]
    return "\n".join(lines) + "\n"


def _send_to_review(run: str, train_ids: list[int]) -> None:
    st.session_state[state.REVIEW_SELECTION] = {"run": run, "ids": [int(i) for i in train_ids]}
    state.goto("review")


def _open_row(df: pd.DataFrame) -> None:
    """Dataframe callback: the clicked row opens its sample on the influence view."""
    rows = st.session_state["emb_listing"]["selection"]["rows"]
    if rows:
        r = df.iloc[int(rows[0])]
        (ui.open_test if r["split"] == "test" else ui.open_train)(int(r["index"]))


def _selection_actions(v: RunView, ids: list[int], scores) -> None:
    """The listing of a box / lasso selection and what to do with it."""
    n_test = sum(g >= v.n_train for g in ids)
    train_ids = [g for g in ids if g < v.n_train]
    st.subheader(f"{len(ids):,} selected: {len(ids) - n_test:,} train, {n_test:,} test")
    a1, a2, a3, a4 = st.columns(4)
    a1.button("Zoom to selection", key="emb_zoom", icon=":material/zoom_in:",
              on_click=lambda: st.session_state.update({ZOOM: zoom_box(v.embedding, ids)}))
    a2.button("Reset zoom", key="emb_zoom_reset", disabled=st.session_state.get(ZOOM) is None,
              on_click=lambda: st.session_state.pop(ZOOM, None))
    a3.download_button("Ids as CSV", ids_csv(v, ids), file_name=f"{v.name}.selection.csv", mime="text/csv",
                       key="emb_csv", icon=":material/download:")
    a4.button(f"Send {len(train_ids):,} training samples to review", key="emb_review", disabled=not train_ids,
              icon=":material/report:", on_click=_send_to_review, args=(v.name, train_ids))
    df = _listing(v, ids, scores)
    st.caption(("Most influential first (|score|). " if scores is not None else "") + "Click a row to open its sample.")
    st.dataframe(df, hide_index=True, width="stretch", key="emb_listing", on_select=lambda: _open_row(df),
                 selection_mode="single-row", column_config={
                     "image": st.column_config.ImageColumn("image", width="small"),
                     "confidence": st.column_config.ProgressColumn("confidence", min_value=0.0, max_value=1.0,
                                                                   format="%.2f"),
                     "score": st.column_config.NumberColumn("score", format="%+.3g"),
                 })
    if len(ids) > MAX_LISTED:
        st.caption(f"showing the first {MAX_LISTED}")


@st.fragment
def map_fragment(v: RunView, mode: str, method: str, test: int | None, k: int, train: int | None = None) -> None:
    if mode == "influence" and test is not None and not v.has_full_rows(method):
        st.info("This run stores only the top-k scores of this method (influence.store_scores = \"topk\"): only "
                "the stored proponents and opponents are coloured; every other sample is shown as 0.")
    focus = train if train is not None else (v.n_train + test if test is not None else None)
    around = [focus, *nearest_ids(v.embedding, focus, STRIP - 1).tolist()] if focus is not None else []
    fig = _figure(v, mode, method, test, k, around)
    chart, strip = st.columns([3, 1])
    with chart:
        event = st.plotly_chart(fig, key="emb_chart", on_select="rerun", selection_mode=("points", "box", "lasso"),
                                width="stretch", config={"scrollZoom": True, "displaylogo": False})
    ids = selected_ids(event)
    scores = v.score_row(method, test) if mode == "influence" and test is not None else None
    with strip:
        if ids and not is_click(event):
            shown = preview_ids(ids, v.n_train, scores, STRIP)
            _strip(v, shown, f"Selection: {len(shown)} of {len(ids):,}" + (", by |score|" if scores is not None else ""),
                   scores)
        elif around:
            what = f"train #{train}" if train is not None else f"test #{test}"
            _strip(v, around, f"{what} and its neighbours (numbered on the map)", scores)
        else:
            st.caption("Click a point to see its image and its neighbours' here; box or lasso to see a selection's. "
                       "Click a thumbnail to open it.")
    click = is_click(event)
    sig = tuple(ids[:50]) + (len(ids),)
    if click and ids and st.session_state.get("_emb_last") != sig:
        st.session_state["_emb_last"] = sig
        g = ids[0]
        if g >= v.n_train:
            state.select_test(g - v.n_train)
        else:
            state.select_train(g)
        st.rerun()  # whole app: the header, buttons and sidebar show the new selection
    st.session_state["_emb_last"] = sig
    if ids and not click:
        _selection_actions(v, ids, scores)
    else:
        st.caption("Click a point to select it (a ◆ becomes the focused test point, a ● the selected training "
                   "sample; open either with the buttons below). Pick the box or lasso tool in the chart's "
                   "toolbar and drag to list samples; double-click to reset the zoom.")
    if state.peek_goto():  # a thumbnail, a row or "send to review": the whole app switches page
        st.rerun(scope="app")


def main() -> None:
    """The map, its colouring and method controls, and buttons to open the selection."""
    v = ui.require_view()
    test = state.get_int("test", v.n_test)
    train = state.get_int("train", v.n_train)
    st.title("Embedding map")
    st.caption("UMAP of the model's penultimate-layer features: training samples ●, test points ◆. "
               "The selected test point is the star, linked to its top-k proponents (blue) and opponents (red).")
    c1, c2, c3, c4 = st.columns([2.4, 2, 2, 2], vertical_alignment="bottom")
    mode = state.get_choice("color", COLOR_MODES, "colouring") or "class"
    with c1:
        mode = ui.bound_select("Colour by", list(COLOR_MODES), "color", mode, "w_color",
                               format_func=COLOR_MODES.get)
    with c2:
        method = ui.method_picker(v, key="w_method_emb")
    with c3:
        k = ui.k_slider(v, method, key="w_k_emb")
    with c4:
        sel = []
        if test is not None:
            sel.append(f"test #{test}")
        if train is not None:
            sel.append(f"train #{train}")
        st.markdown("Selected: " + (", ".join(sel) if sel else "nothing yet"))
    if mode == "influence" and test is None:
        st.info("Select a test point (click a ◆) to colour the map by its influence.")
    map_fragment(v, mode, method, test, k, train)
    if test is not None or train is not None:
        b1, b2, _ = st.columns([1, 1, 3])
        if test is not None:
            b1.button(f"Open test #{test}", key="emb_open_test", on_click=ui.open_test, args=(test,))
        if train is not None:
            b2.button(f"Open train #{train}", key="emb_open_train", on_click=ui.open_train, args=(train,))

