"""Runs: every cache under the configured folder, with dataset, model, accuracy and methods."""

from __future__ import annotations

import streamlit as st

from cache_format.runs import build_command
from explorer import state, ui
from explorer.help import no_runs_page, problem_text
from explorer.page_spec import PageSpec
from explorer.text import md_code, md_escape

PAGE = PageSpec(key="runs", title="Runs", icon=":material/folder_open:", order=10, params=("run",))


def _open(name: str) -> None:
    state.choose_run(name)
    state.goto("predictions")


def main() -> None:
    """The run list with an Open button per run; runs that cannot be opened, with the fix."""
    folder = state.cache_dir()
    all_runs = ui.runs(str(folder))
    if not all_runs:
        no_runs_page(folder)
        return
    st.title("Influence Explorer")
    st.markdown("See **why** a model predicts what it predicts, in terms of its training data: for each test "
                "prediction, the training samples that pushed it toward its label (**proponents**) or away "
                "(**opponents**).")
    st.caption(f"Cache folder: {md_code(folder)}")
    current = state.selected_run_name()
    ok = [r for r in all_runs if r.ok]
    for r in ok:
        with st.container(border=True):
            c1, c2, c3, c4 = st.columns([3, 1.2, 3, 1.2], vertical_alignment="center")
            c1.markdown(f"#### {md_escape(r.name)}\n{md_escape(r.dataset)} · {md_code(r.model)}")
            c2.metric("Test accuracy", f"{r.test_accuracy:.1%}" if r.test_accuracy is not None else "n/a")
            c3.markdown(f"**{r.n_train:,}** train · **{r.n_test:,}** test  \nmethods: "
                        + " ".join(md_code(m) for m in r.methods))
            c4.button("Open", key=f"open_{r.name}", on_click=_open, args=(r.name,),
                      type="primary" if r.name == current else "secondary", width="stretch")
    bad = [r for r in all_runs if not r.ok]
    if bad:
        st.subheader("Runs that cannot be opened")
        for r in bad:
            with st.container(border=True):
                st.markdown(f"**{md_escape(r.name)}**")
                st.warning(problem_text(r.problem or "unreadable"), icon=":material/warning:")
                st.code(f"{build_command(r.name)} --overwrite --cache-dir {folder}", language="bash")

