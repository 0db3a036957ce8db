"""Tour: a presenter's handful of striking examples, chosen by precompute (``arrays/tour.json``), each
a link into the influence (or compare) view; works in presenter mode (``?present=1``)."""

from __future__ import annotations

import streamlit as st

from cache_format.runs import build_command
from cache_format.tour import TourEntry, TourProblem, read_tour
from explorer import state, ui
from explorer.page_spec import PageSpec
from explorer.text import md_escape

PAGE = PageSpec(key="tour", title="Tour", icon=":material/tour:", order=80, params=("run",))


def _open(e: TourEntry) -> None:
    """Button callback: open the example's view (one history entry), in the session's presenter mode."""
    if e.page == "compare":
        state.set_params(test=e.index, a=e.method, b=e.b)
        state.goto("compare")
        return
    if e.split == "test":
        state.set_params(test=e.index, train=None, method=e.method,  # explained toward the predicted label if asked
                         toward=e.view if e.view == "predicted" else None)
    else:
        state.set_params(train=e.index, method=e.method)
    state.goto("influence")


def main() -> None:
    """The run's tour: one row per example (image, title, reason, Open)."""
    v = ui.require_view()
    st.title("Tour: striking examples")
    try:
        entries = read_tour(v.run)
    except TourProblem as exc:
        st.error(f"The tour of this run cannot be shown: {md_escape(str(exc))}", icon=":material/error:")
        return
    if entries is None:
        st.info("No tour was precomputed for this run (it was built before tours existed). Rebuild it with "
                f"`{build_command(v.name)} --overwrite` to get one.", icon=":material/info:")
        return
    if not entries:
        st.info("The tour of this run is empty: precompute found no striking example.", icon=":material/info:")
        return
    if not ui.presenting():
        st.caption("Chosen by precompute from the run's predictions and influence arrays. Open one to show it; "
                   "add `?present=1` to the URL for presenter mode.")
    for n, e in enumerate(entries):
        with st.container(border=True):
            c1, c2, c3 = st.columns([1, 7, 1.4], vertical_alignment="center")
            with c1:
                ui.big_image(v, e.split, e.index, px=72)
            with c2:
                st.markdown(f"**{md_escape(e.title)}**  \n{md_escape(e.reason)}")
            with c3:
                where = "compare" if e.page == "compare" else "open"
                st.button(f"{where.capitalize()} →", key=f"tour_{n}", on_click=_open, args=(e,), width="stretch",
                          help=f"{e.split} #{e.index} · {e.method}" + (f" vs {e.b}" if e.b else ""))
