"""Pieces shared by the pages: the run guard, the sidebar's run picker, URL-bound widgets and sample cards.

Every page gets its run from :func:`require_run` (the :class:`RunCache`) or :func:`require_view`
(its :class:`RunView`); the only run picker is the sidebar's (:func:`sidebar`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import streamlit as st

from cache_format.atomic import recover_swaps
from cache_format.names import SIGN_CONVENTION
from cache_format.runs import CacheProblem, RunCache, RunSummary, list_runs
from components.cards import Card
from components.colors import CORRECT, WRONG, class_color, text_color
from explorer import state
from explorer.data import RunView, view
from explorer.help import no_openable_runs_page, no_runs_page, problem_page
from explorer.text import md_code, md_escape

__all__ = ["md_code", "md_escape"]  # the escapes, re-exported for the pages (see explorer.text)

SIGN_LINE = ("**Sign convention:** positive score = **proponent** (up-weighting that training sample lowers "
             "this test point's loss), negative = **opponent** (raises it).")


@st.cache_data(ttl=10, show_spinner=False)
def runs(cache_dir: str) -> list[RunSummary]:
    """Every run under the cache folder (re-listed at most every 10 s); a run whose files do not
    match its manifest (:func:`explorer.state.run_problem`) is listed as not ok, with the problem."""
    out = []
    try:  # a precompute killed mid-swap left its new run in a hidden folder: finish that swap first
        recover_swaps(cache_dir)
    except OSError:
        pass
    for r in list_runs(cache_dir):
        problem = state.run_problem(r.path) if r.ok else None
        out.append(replace(r, ok=False, problem=problem) if problem else r)
    return out


def require_run() -> RunCache:
    """The selected run (the first readable one if the URL names none, which then goes in the URL);
    otherwise a help page (no runs / what is wrong and how to fix it) and ``st.stop()``."""
    name = state.selected_run_name()
    if name is None:
        listed = runs(str(state.cache_dir()))
        ok = [r for r in listed if r.ok]
        if not ok:
            if listed:
                no_openable_runs_page(state.cache_dir(), listed)
            else:
                no_runs_page(state.cache_dir())
            st.stop()
        name = ok[0].name
        state.set_param("run", name)
    try:
        return state.open_run(name)
    except CacheProblem as exc:
        problem_page(exc)
        st.stop()
    raise AssertionError("unreachable")


def require_view() -> RunView:
    """The :class:`RunView` of :func:`require_run`'s run."""
    return view(require_run())


def bound_select(label: str, options: Sequence[str], param: str, value: str, key: str, **kw) -> str:
    """A selectbox that shows URL parameter ``param`` (currently ``value``) and writes changes back."""
    if st.session_state.get(key) != value:
        st.session_state[key] = value
    return st.selectbox(label, options, key=key, on_change=lambda: state.set_param(param, st.session_state[key]), **kw)


def method_picker(v: RunView, key: str = "w_method", label: str = "Influence method") -> str:
    """The method selector (URL ``method``); a deep link naming a method this run lacks gets a
    warning at the top of the page (see :func:`explorer.state.get_choice`).

    Each method shows its LDS beside its name once ``influence-explorer evaluate`` has run.
    """
    from cache_format.evaluation import method_label_with_lds

    method = state.selected_method(v.methods)
    labels = {m: method_label_with_lds(v.run, m) for m in v.methods}
    return bound_select(label, v.methods, "method", method, key, format_func=labels.get)


def k_slider(v: RunView, method: str, default: int = 8, key: str = "w_k", cap: int = 24) -> int:
    """The top-k slider (URL ``k``), capped by what the cache stores; ``?k=0``, ``?k=abc`` or a k above
    the cap get a warning naming the parameter."""
    hi = max(1, min(cap, v.topk_max(method)))
    k = state.get_int_in("k", 1, hi, what=f"top k for this page (the cache stores {v.topk_max(method)})")
    k = min(default, hi) if k is None else k
    if st.session_state.get(key) != k:
        st.session_state[key] = k
    return st.slider("Top k", 1, hi, key=key, on_change=lambda: state.set_param("k", st.session_state[key]))


def presenting() -> bool:
    """Whether presenter mode is on (``?present=1``)."""
    return state.get_param("present") == "1"


#: presenter mode: larger type, no Streamlit chrome (header, toolbar, sidebar), tighter top margin
PRESENTER_CSS = """<style>
html{font-size:20px}
[data-testid=stHeader],[data-testid=stToolbar],[data-testid=stDecoration],[data-testid=stSidebar],
[data-testid=stSidebarCollapsedControl],[data-testid=stStatusWidget],[data-testid=stMainMenu]{display:none!important}
[data-testid=stMainBlockContainer]{padding-top:0.6rem!important;padding-bottom:1rem!important;max-width:100%}
.ie-card{font-size:1rem}.ie-card div{font-size:0.95rem!important}.ie-badge{font-size:0.8rem!important}
div[class*='st-key-iecard_']{padding:0.45rem!important}
div[class*='st-key-iecard_'] button{padding:0.1rem 0.2rem!important;min-height:0!important}
div[class*='st-key-iecard_'] button p{font-size:0.75rem!important;white-space:nowrap}
h1{font-size:1.7rem!important;padding:0.2rem 0!important}h3{font-size:1.2rem!important;padding:0.1rem 0!important}
</style>"""


def presenter_style() -> None:
    """Apply presenter mode's style when ``?present=1``; ``?present=`` with another value is named."""
    raw = state.get_param("present")
    if raw is None:
        return
    if raw not in ("0", "1"):
        state.url_problem("present", f"URL parameter {md_code('present=' + raw[:60])} is not valid: expected "
                                     "1 (presenter mode) or 0. It is ignored.")
    elif raw == "1":
        st.html(PRESENTER_CSS)


def chip(v: RunView, label: int) -> str:
    """A class name on its class colour, in black or white text, whichever contrasts more (HTML
    inside markdown: escaped for both)."""
    bg = class_color(label)
    return (f'<span class="ie-chip" style="background:{bg};color:{text_color(bg)};border-radius:4px;padding:0 6px;'
            f'font-weight:600">{md_escape(v.class_names[int(label)])}</span>')


def sample_card(v: RunView, split: str, index: int, key: str, score: float | None = None, scale: float = 1.0,
                ref_label: int | None = None) -> Card:
    """A card for one sample: labels, the model's prediction, optional score bar and badges."""
    row = v.sample(split, index)
    label, pred, conf = int(row["label"]), int(row["pred"]), float(row["confidence"])
    badges = []
    if ref_label is not None and label != ref_label:
        badges.append(f"label ≠ {v.class_names[ref_label]}")
    if split == "test" and not bool(row["correct"]):
        badges.append("misclassified")
    lines = (f"{'label' if split == 'train' else 'true'} {chip(v, label)}",
             f'pred {chip(v, pred)} <span style="color:#666">{conf:.0%}</span>')
    accent = class_color(label) if split == "train" else (CORRECT if bool(row["correct"]) else WRONG)
    return Card(key=key, value=int(index), image_uri=v.thumb(split, index), button=f"{split} #{index}",
                alt=f"{split} #{index}", lines=lines, score=score, scale=scale, badges=tuple(badges), accent=accent,
                title=v.source_file(split, index) or "")


def cards_for(v: RunView, split: str, ids: np.ndarray, scores: np.ndarray | None, scale: float, prefix: str,
              ref_label: int | None = None) -> list[Card]:
    """Cards for a list of ids (e.g. a top-k list) with their scores."""
    return [sample_card(v, split, int(i), f"{prefix}_{n}_{int(i)}", None if scores is None else float(scores[n]),
                        scale, ref_label) for n, i in enumerate(ids)]


def open_test(index: int) -> None:
    """Card callback: focus a test point and go to the influence view (one history entry)."""
    state.select_test(index)
    state.goto("influence")


def test_links() -> Callable[[int], tuple[object, dict[str, str]]]:
    """Where a test card links to: ``index -> (the influence page, its query parameters)``, what
    :func:`open_test` does as a page link (the session's influence parameters, ``test`` set,
    ``train`` dropped): the page switch takes one script run instead of two."""
    from explorer import page_spec

    page = page_spec.find("influence")
    target = page_spec.nav_page(page)
    params = {k: v for k, v in state.params_for(page.spec.params).items() if k != "train"}
    return lambda index: (target, {**params, "test": str(int(index))})


def open_train(index: int) -> None:
    """Card callback: open a training sample's reverse view."""
    state.select_train(index)
    state.goto("influence")


def source_file_caption(v: RunView, split: str, index: int) -> None:
    """The sample's file (image-folder runs), relative to the dataset folder; the full path on hover."""
    rel = v.source_file(split, index)
    if rel is None:
        return
    root = v.source_root
    full = f"{root.rstrip('/')}/{rel}" if root else rel
    st.caption(f":material/image: File: {md_code(rel)}", help=f"Source file: {md_code(full)}")


def big_image(v: RunView, split: str, index: int, px: int = 224) -> None:
    """The sample's image, large and crisp."""
    st.markdown(f'<img src="{v.thumb(split, index, px)}" alt="{split} #{index} (large)" width="{px}" '
                f'style="image-rendering:pixelated;border-radius:6px;max-width:100%"/>', unsafe_allow_html=True)


def sidebar() -> None:
    """The run picker and the current selection, on every page."""
    all_runs = runs(str(state.cache_dir()))
    ok = [r for r in all_runs if r.ok]
    with st.sidebar:
        st.markdown("### :material/hub: Influence Explorer")
        if ok:
            _run_picker(ok)
            test, train = state.remembered("test"), state.remembered("train")
            if test is not None or train is not None:
                st.markdown("**Selected**")
                if test is not None:
                    st.markdown(f"test #{md_escape(test)}")
                if train is not None:
                    st.markdown(f"train #{md_escape(train)}")
        st.caption(SIGN_CONVENTION)


def _run_picker(ok: list[RunSummary]) -> None:
    """The one run picker (URL ``run``); empty when the URL names no readable run."""
    by_name = {r.name: r for r in ok}
    current = state.selected_run_name()
    shown = current if current in by_name else None

    def _switch() -> None:
        if st.session_state["w_run"] is not None:
            state.choose_run(st.session_state["w_run"])

    if st.session_state.get("w_run") != shown:
        st.session_state["w_run"] = shown
    st.selectbox("Run", list(by_name), key="w_run", on_change=_switch, placeholder="choose a run",
                 format_func=lambda n: f"{n} · {by_name[n].dataset}/{by_name[n].model}")
    if shown is not None:
        r = by_name[shown]
        acc = f"{r.test_accuracy:.1%}" if r.test_accuracy is not None else "n/a"
        st.caption(f"{r.n_train:,} train · {r.n_test:,} test · accuracy {acc}")
