"""Review suspected mislabels: a keyboard-driven queue of flagged training labels.

The run comes from ``ui.require_run()`` (``?run=<name>``, picked in the sidebar); decisions go to ``<cache-dir>/<run>.annotations.sqlite`` (see
:mod:`explorer.annotations`), one transaction per decision, so none is lost.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from cache_format.mislabels import MislabelData, describe_method, detection_curve, load_mislabels
from cache_format.names import (
    MANIFEST,
    SELF_PREFIX,
    TEST_IMAGES,
    TRAIN_IMAGES,
    TRAIN_TOP_HURT,
    TRAIN_TOP_HURT_SCORES,
)
from cache_format.runs import CacheProblem, RunCache
from components.review_figures import detection_figure, live_curve, progress_figure
from explorer import state, ui
from explorer.annotations import AnnotationError, AnnotationStore, db_path
from explorer.decisions_schema import MAX_COMMENT
from explorer.page_spec import PageSpec
from explorer.review_bulk import bulk_panel
from explorer.review_export import export_panel
from explorer.state import cache_dir
from explorer.text import md_escape

PAGE = PageSpec(key="review", title="Suspected mislabels", icon=":material/report:", order=60,
                params=("run", "reviewer"))
#: the longest reviewer name accepted (in the form or ``?reviewer=``)
MAX_NAME = 64

STATUSES = ("pending", "reviewed", "unsure", "all")
SHORTCUTS = [("K", "keep the given label"), ("A", "accept the suggested label"), ("0-9", "relabel to that class"),
             ("U", "unsure"), ("X", "exclude from training"), ("Z", "undo your last decision"), ("N / P", "next / previous without deciding")]
K = "review_"  # session-state prefix


# ------------------------------------------------------------------------------------------ data
@st.cache_resource(show_spinner=False)
def _mislabels(_run: RunCache, path: str, mtime: float) -> MislabelData:
    """The run's mislabel rankings, kept per run folder until its manifest changes."""
    return load_mislabels(_run)


def _store(run_name: str) -> AnnotationStore:
    """This session's connection to the run's decisions database (one per session and database)."""
    path = db_path(cache_dir(), run_name)
    key = f"{K}store:{path}"
    if key not in st.session_state:
        st.session_state[key] = AnnotationStore(path, run=run_name)
    return st.session_state[key]


def _image(img: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upscale of a small uint8 image to about ``size`` pixels wide."""
    f = max(1, size // img.shape[1])
    return np.repeat(np.repeat(np.asarray(img), f, axis=0), f, axis=1)


def _influence_method(data: MislabelData, ranking: str) -> str:
    """The influence method whose train->test arrays explain a flag (the ranking's own, else exact)."""
    methods = data.run.methods
    if ranking.startswith(SELF_PREFIX) and ranking[len(SELF_PREFIX):] in methods:
        return ranking[len(SELF_PREFIX):]
    for m in ("exact", "graddot", "tracin"):
        if m in methods:
            return m
    return methods[0]


# ----------------------------------------------------------------------------------- callbacks
def _decide(store: AnnotationStore, sample: int, decision: str, new_label: int | None, given: int,
            method: str, score: float, rank: int) -> None:
    comment = st.session_state.get(f"{K}comment_{sample}") or None
    try:
        store.record(sample, decision, new_label, st.session_state["reviewer"], given_label=given,
                     method=method, score=score, rank=rank, comment=comment)
    except (AnnotationError, OSError) as exc:
        st.session_state[K + "error"] = f"decision on #{sample} NOT saved: {exc}"
        return
    except Exception as exc:  # sqlite3 errors: keep the reviewer on this sample, say why
        st.session_state[K + "error"] = f"decision on #{sample} NOT saved ({type(exc).__name__}: {exc}); try again"
        return
    label = "" if new_label is None else f" -> {new_label}"
    st.session_state[K + "flash"] = f"saved #{sample}: {decision}{label}"
    st.session_state[K + "cursor"] = rank + 1
    st.session_state[K + "advanced"] = st.session_state.get(K + "advanced", 0) + 1


def _undo(store: AnnotationStore, ranks: np.ndarray) -> None:
    try:
        last = store.undo_last(st.session_state["reviewer"])
    except Exception as exc:
        st.session_state[K + "error"] = f"undo failed ({type(exc).__name__}: {exc})"
        return
    if last is None:
        st.session_state[K + "flash"] = "nothing to undo"
        return
    i = int(last["sample_index"])
    more = f" and {last['undone'] - 1} more of its bulk action" if last.get("undone", 1) > 1 else ""
    st.session_state[K + "flash"] = f"undid {last['decision']} on #{i}{more}"
    st.session_state[K + "cursor"] = int(ranks[i]) if i < len(ranks) else 1


def _move(rank: int, step: int) -> None:
    st.session_state[K + "cursor"] = max(1, rank + step)
    st.session_state[K + "back"] = step < 0
    st.session_state[K + "advanced"] = st.session_state.get(K + "advanced", 0) + 1


#: scrolls the page back to the top (the next sample's image and id), run once per advance; a
#: constant script (no data from the cache), the advance count only makes each one a new element
_SCROLL_TOP = ("<script>/*{n}*/for (const s of ['[data-testid=stMain]', '[data-testid=stAppViewContainer]']) "
               "{{ const e = document.querySelector(s); if (e) e.scrollTo({{top: 0}}); }} window.scrollTo(0, 0);"
               "</script>")


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= MAX_NAME and name.isprintable()


def _reviewer() -> str | None:
    """The reviewer: this session's, else the URL's (``?reviewer=``, so a reload or a bookmark does not
    ask again); an unusable URL value is named in a warning."""
    raw = state.get_param("reviewer")
    if raw is not None and not _valid_name(raw.strip()):
        state.url_problem("reviewer", f"URL parameter `reviewer` is not a usable name: expected 1 to {MAX_NAME} "
                                      "printable characters. It is ignored.")
        raw = None
    name = st.session_state.get("reviewer") or (raw.strip() if raw else None)
    if name:
        st.session_state["reviewer"] = name
        if raw is None or raw.strip() != name:
            state.set_param("reviewer", name)
    return name


# ---------------------------------------------------------------------------------------- page
def _ask_reviewer() -> None:
    with st.form(K + "who"):
        name = st.text_input("Your name (recorded with every decision)", key=K + "name_input", max_chars=MAX_NAME)
        if st.form_submit_button("Start reviewing", type="primary"):
            if _valid_name(name.strip()):
                st.session_state["reviewer"] = name.strip()
                state.set_param("reviewer", name.strip())  # remembered in the URL: a reload does not ask again
                st.rerun()
            st.error("reviewer: enter a name (printable characters) to start")
    st.stop()


def main() -> None:
    """The review queue of the selected run: one card, its evidence, the decision buttons, progress."""
    run = ui.require_run()
    run_name = run.path.name
    st.header("Review suspected mislabels")
    try:
        data = _mislabels(run, str(run.path), (run.path / MANIFEST).stat().st_mtime)
        table = data.table
    except CacheProblem as exc:
        st.error(md_escape(exc.message))
        st.stop()
    reviewer = _reviewer()
    if not reviewer:
        _ask_reviewer()
    try:
        store = _store(run_name)
    except AnnotationError as exc:
        st.error(md_escape(exc))
        st.stop()

    n = run.n_train
    classes = run.class_names
    given = table["label"].to_numpy(np.int64)
    suggested = table["suggested_label"].to_numpy(np.int64)
    status = store.status(n)
    current = store.current()

    # ---------------------------------------------------------------- sidebar: method, filters, help
    with st.sidebar:
        st.caption(f"Reviewer: **{md_escape(reviewer)}** · run **{md_escape(run_name)}**")
        methods = data.methods
        method = st.selectbox("Rank by", methods, index=methods.index(data.default_method),
                              key=K + "method", help="Higher score = more suspicious")
        st.caption(md_escape(describe_method(method)))
        if method == data.ranking_default:
            st.caption(f"Default ranking: {md_escape(data.ranking_reason)}")
        class_filter = st.multiselect("Given label", classes, key=K + "classes")
        pairs = pd.Series([f"{classes[g]} → {classes[s]}" for g, s in zip(given, suggested, strict=True)])
        pair_counts = pairs[given != suggested].value_counts()
        pair_opts = ["any"] + list(pair_counts.index)
        pair = st.selectbox("Given → suggested", pair_opts, key=K + "pair",
                            format_func=lambda p: p if p == "any" else f"{p} ({pair_counts[p]})")
        st.markdown("**Shortcuts**\n\n" + "\n".join(f"- `{k}` {what}" for k, what in SHORTCUTS))

    if st.session_state.get(K + "cursor_method") != method:
        st.session_state[K + "cursor_method"] = method
        st.session_state[K + "cursor"] = 1
    sent = st.session_state.get(state.REVIEW_SELECTION) or {}
    picked = sent.get("ids") if sent.get("run") == run_name else None
    if picked:
        c1, c2 = st.columns([4, 1], vertical_alignment="center")
        c1.info(f"Queue limited to the **{len(picked):,}** training samples sent from the embedding map.",
                icon=":material/scatter_plot:")
        c2.button("Show the whole queue", key=K + "clear_map",
                  on_click=lambda: st.session_state.pop(state.REVIEW_SELECTION, None))
    ranking = data.ranking(method)
    ranks = data.ranks(method)
    q = ranking.copy()
    q["label"] = given[q["index"]]
    q["status"] = status[q["index"]]
    if class_filter:
        q = q[q["label"].isin([classes.index(c) for c in class_filter])]
    if picked:
        q = q[q["index"].isin(picked)]
    if pair != "any":
        q = q[(pairs.to_numpy()[q["index"]] == pair) & (given[q["index"]] != suggested[q["index"]])]
    # the tabs count what the filters leave, so a tab's number is the queue it opens
    counts = {s: int((q["status"] == s).sum()) for s in STATUSES[:3]}
    counts["all"] = len(q)
    filtered = bool(class_filter) or pair != "any" or bool(picked)
    tab = st.radio("Status", STATUSES, horizontal=True, key=K + "status",
                   format_func=lambda s: f"{s} ({counts[s]})", label_visibility="collapsed",
                   help="counts within the sidebar's filters" if filtered else None)
    if tab != "all":
        q = q[q["status"] == tab]
    what = ", ".join([*(f"given {c}" for c in class_filter), *([] if pair == "any" else [pair]),
                      *(["the map selection"] if picked else []), tab])
    with st.sidebar:  # under the filters it acts on
        bulk_panel(store, q, given, suggested, method, reviewer, filtered, what)

    if K + "error" in st.session_state:
        st.error(md_escape(st.session_state.pop(K + "error")))
    if K + "flash" in st.session_state:
        st.toast(md_escape(st.session_state.pop(K + "flash")))

    cursor = int(st.session_state.get(K + "cursor", 1))
    back = st.session_state.pop(K + "back", False)
    if q.empty:
        st.success(f"No {tab} samples match the filters." if tab != "all" else "No samples match the filters.")
        row = None
    else:
        ahead = q[q["rank"] <= cursor] if back else q[q["rank"] >= cursor]
        row = (ahead.iloc[-1] if back else ahead.iloc[0]) if not ahead.empty else q.iloc[0]

    if st.session_state.get(K + "advanced"):  # a decision or a step: the next sample from the top
        st.html(_SCROLL_TOP.format(n=int(st.session_state[K + "advanced"])), unsafe_allow_javascript=True)
    if row is not None:
        _card(run, data, store, row, method, given, suggested, classes, ranks, current, len(q), q)

    _progress(run, data, store, status, given, classes, method)
    export_panel(run, store, given, run_name)


def _card(run, data: MislabelData, store, row, method, given, suggested, classes, ranks, current, q_len, q) -> None:
    i, rank, score = int(row["index"]), int(row["rank"]), float(row["score"])
    t = data.table.loc[i]
    g, s = int(given[i]), int(suggested[i])
    names = [md_escape(c) for c in classes]
    pos = int(np.flatnonzero(q["index"].to_numpy() == i)[0]) + 1
    st.subheader(f"Training sample #{i} · rank {rank} of {run.n_train} · {pos} of {q_len} in queue")
    left, right = st.columns([1, 1.4])
    with left:
        st.image(_image(run.array(TRAIN_IMAGES)[i], 280), caption=f"#{i}", width=280)
    with right:
        c1, c2 = st.columns(2)
        c1.metric("Given label", names[g])
        c2.metric("Suggested label", names[s], delta=None if s != g else "same as given", delta_color="off")
        st.markdown(
            f"**{md_escape(method)}** score `{score:.4g}` (rank {rank}/{run.n_train})  \n"
            f"Model prediction **{names[int(t['pred_label'])]}**"
            + (f" · out-of-fold prediction **{names[int(t['oof_label'])]}** "
               f"({float(t['oof_confidence']):.0%})" if "oof_label" in t else "")
            + f" · neighbours' vote **{names[int(t['proponent_label'])]}** ({float(t['proponent_agreement']):.0%})"
            + ("  \ncleanlab flags this label as an issue" if bool(t.get("cleanlab_issue", False)) else ""))
        others = ", ".join(f"{m}: {int(data.ranks(m)[i])}" for m in data.methods if m != method)
        st.caption(f"Rank under other methods: {md_escape(others)}")
        if i in current.index:
            c = current.loc[i]
            new = c["new_label"]
            lab = "" if pd.isna(new) else f" → {names[int(new)] if 0 <= int(new) < len(names) else int(new)}"
            note = f"  \nComment: {md_escape(c['comment'])}" if isinstance(c["comment"], str) and c["comment"] else ""
            bulk = " (bulk action)" if isinstance(c["batch"], str) and c["batch"] else ""
            st.info(f"Current decision: **{md_escape(c['decision'])}**{lab} by {md_escape(c['reviewer'])} "
                    f"at {md_escape(str(c['created_at'])[:19])}{bulk}{note}")
        st.text_input("Comment (optional, saved with your decision)", key=f"{K}comment_{i}", max_chars=MAX_COMMENT,
                      placeholder="e.g. ambiguous stroke, could be 1 or 7")
    _buttons(store, i, g, s, method, score, rank, classes, ranks)
    _why(run, data, i, method, classes)


def _buttons(store, i, g, s, method, score, rank, classes, ranks) -> None:
    cols = st.columns(7)
    cols[0].button("Keep (K)", key=K + "keep", shortcut="k", type="primary", on_click=_decide,
                   args=(store, i, "keep", g, g, method, score, rank), width="stretch")
    cols[1].button(f"Accept {md_escape(classes[s])} (A)", key=K + "accept", shortcut="a", on_click=_decide,
                   args=(store, i, "accept", s, g, method, score, rank), width="stretch")
    cols[2].button("Unsure (U)", key=K + "unsure", shortcut="u", on_click=_decide,
                   args=(store, i, "unsure", None, g, method, score, rank), width="stretch")
    cols[3].button("Exclude (X)", key=K + "exclude", shortcut="x", on_click=_decide,
                   args=(store, i, "exclude", None, g, method, score, rank), width="stretch",
                   help="remove this sample from training (kept in the decisions export and the excluded-samples CSV)")
    cols[4].button("Undo (Z)", key=K + "undo", shortcut="z", on_click=_undo, args=(store, ranks),
                   width="stretch")
    cols[5].button("Prev (P)", key=K + "prev", shortcut="p", on_click=_move, args=(rank, -1),
                   width="stretch")
    cols[6].button("Next (N)", key=K + "next", shortcut="n", on_click=_move, args=(rank, 1),
                   width="stretch")
    keyed = classes[:10]
    rel = st.columns(max(len(keyed), 1))
    for c, name in enumerate(keyed):
        shown = md_escape(name)
        rel[c].button(f"{c}: {shown}" if str(name) != str(c) else str(c), key=f"{K}relabel_{c}", shortcut=str(c),
                      on_click=_decide, args=(store, i, "relabel", c, g, method, score, rank),
                      width="stretch", help=f"relabel to {shown}")
    if len(classes) > 10:
        extra = st.selectbox("Relabel to another class", classes[10:], index=None, key=f"{K}relabel_more_{i}")
        if extra is not None:
            st.button(f"Relabel to {md_escape(extra)}", key=K + "relabel_more", on_click=_decide,
                      args=(store, i, "relabel", classes.index(extra), g, method, score, rank))


def _why(run, data: MislabelData, i, method, classes) -> None:
    st.markdown("##### Why it was flagged")
    inf = _influence_method(data, method)
    tr_img, te_img = run.array(TRAIN_IMAGES), run.array(TEST_IMAGES)
    labels = data.table["label"].to_numpy()
    tests = run.test_samples()
    k = 6
    a, b = st.columns(2)
    with a:
        hurt = np.asarray(run.method_array(inf, TRAIN_TOP_HURT)[i][:k])
        hurt_s = np.asarray(run.method_array(inf, TRAIN_TOP_HURT_SCORES)[i][:k])
        st.caption(f"Test points it hurts most ({md_escape(inf)}; negative = raises their loss)")
        st.image([_image(te_img[j], 72) for j in hurt], width=72,
                 caption=[evidence_caption("test", int(j), classes[int(tests.loc[j, "label"])], float(v),
                                           pred=classes[int(tests.loc[j, "pred"])])
                          for j, v in zip(hurt, hurt_s, strict=True)])
        nb = data.embedding_neighbors(i, k)
        st.caption("Nearest neighbours in the embedding (given labels)")
        st.image([_image(tr_img[j], 72) for j in nb], width=72,
                 caption=[evidence_caption("train", int(j), classes[labels[j]]) for j in nb])
    with b:
        pro, pro_s = (np.asarray(x[i][:k]) for x in data.proponents)
        opp, opp_s = (np.asarray(x[i][:k]) for x in data.opponents)
        st.caption("Strongest proponents among training samples (support this label)")
        st.image([_image(tr_img[j], 72) for j in pro], width=72,
                 caption=[evidence_caption("train", int(j), classes[labels[j]], float(v))
                          for j, v in zip(pro, pro_s, strict=True)])
        st.caption("Strongest opponents (fight this label)")
        st.image([_image(tr_img[j], 72) for j in opp], width=72,
                 caption=[evidence_caption("train", int(j), classes[labels[j]], float(v))
                          for j, v in zip(opp, opp_s, strict=True)])


def evidence_caption(split: str, index: int, label: str, score: float | None = None, pred: str | None = None) -> str:
    """An evidence image's caption, every value named: ``test #233 · true 0 · pred 0 · score -55``
    (plain text: ``st.image`` captions render markdown, so cache strings are escaped)."""
    parts = [f"{split} #{index}", f"{'true' if split == 'test' else 'label'} {md_escape(label)}"]
    if pred is not None:
        parts.append(f"pred {md_escape(pred)}")
    if score is not None:
        parts.append(f"score {score:+.2g}")
    return " · ".join(parts)


def _progress(run, data: MislabelData, store, status, given, classes, method) -> None:
    st.divider()
    n = len(status)
    reviewed, unsure = int((status == "reviewed").sum()), int((status == "unsure").sum())
    excluded = len(store.excluded(n))
    st.progress(reviewed / max(n, 1), text=f"Reviewed {reviewed} / {n} ({unsure} unsure, {excluded} excluded)")
    nc = len(classes)
    left, right = st.columns(2)
    with left:
        st.plotly_chart(progress_figure(classes, np.bincount(given, minlength=nc),
                                        np.bincount(given[status == "reviewed"], minlength=nc),
                                        np.bincount(given[status == "unsure"], minlength=nc)),
                        width="stretch", key=K + "progress_fig")
    with right:
        if data.detection:
            flipped = run.train_samples()["flipped"].to_numpy(bool)
            curves = {m: detection_curve(data.table[m].to_numpy(), flipped) for m in data.methods}
            order = store.current().sort_values("id")["sample_index"].to_numpy(np.int64)
            order = order[order < n]
            fig = detection_figure(curves, method, live_curve(order, flipped), int(flipped.sum()))
            st.plotly_chart(fig, width="stretch", key=K + "detection_fig")
            d = data.detection[method]
            st.caption(f"{md_escape(method)}: ROC-AUC {d['roc_auc']:.3f}, found {d['found@10%']:.0%} of flipped labels in "
                       "the top 10% (ground truth from injected noise; not shown on the cards)")
        else:
            st.caption("No ground truth in this run (no injected label noise): detection curves are not shown.")
