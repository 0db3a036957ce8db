"""Friendly pages for caches that cannot be shown: what is wrong and the exact command that fixes it."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from cache_format.runs import CacheProblem, RunSummary, build_command
from explorer.text import md_code, md_escape

_TITLES = {
    "missing": "This run has not been built yet",
    "incomplete": "This run's cache is incomplete",
    "version": "This run was built by a different version",
    "damaged": "This run is damaged",
    "invalid": "That is not a run name",
    "topk": "This view needs the full score matrix",
}


def problem_text(message: str) -> str:
    """A problem message as markdown: paths shown relative to the cache folder, everything escaped."""
    from explorer.state import cache_dir

    return md_escape(message.replace(f"{cache_dir()}/", ""))


def problem_page(problem: CacheProblem) -> None:
    """Explain a :class:`CacheProblem` (missing / incomplete / version / damaged / invalid) and how to fix it."""
    st.title(_TITLES.get(problem.kind, "This run cannot be opened"))
    st.error(problem_text(problem.message), icon=":material/error:")
    if problem.kind != "invalid":  # for "invalid", problem.path is the cache folder: nothing to build
        run = Path(problem.path).name
        cmd = build_command(run) + ("" if problem.kind == "missing" else " --overwrite")
        cache = Path(problem.path).parent
        st.markdown("Build it with:")
        st.code(f"{cmd} --cache-dir {cache}", language="bash")
        st.markdown(f"then open it: {md_code(f'influence-explorer app --cache-dir {cache}')}")
    _runs_link()


def _runs_link() -> None:
    """A link to the Runs page (the home page, built from its declaration)."""
    from explorer import page_spec

    st.page_link(page_spec.nav_page(page_spec.find(page_spec.HOME)), label="See all runs", icon=":material/list:")


def no_openable_runs_page(cache_dir: Path, bad: list[RunSummary]) -> None:
    """The cache folder holds runs, but none can be opened: each one's problem and its fix."""
    st.title("No run here can be opened")
    for r in bad:
        st.warning(problem_text(r.problem or f"{r.name}: unreadable"), icon=":material/warning:")
        st.code(f"{build_command(r.name)} --overwrite --cache-dir {cache_dir}", language="bash")
    _runs_link()


def no_runs_page(cache_dir: Path) -> None:
    """The cache folder is missing or holds no runs."""
    st.title("No influence runs found")
    where = "does not exist" if not cache_dir.is_dir() else "contains no runs"
    st.warning(f"The cache folder {md_code(cache_dir)} {where}.", icon=":material/folder_off:")
    st.markdown("Build the bundled demo (about 30 seconds on a laptop CPU):")
    st.code(f"{build_command('digits')} --cache-dir {cache_dir}", language="bash")
    st.markdown("or your own run, then point the app at its folder:")
    st.code(f"{build_command('my_run')} --cache-dir {cache_dir}\n"
            f"influence-explorer app --cache-dir {cache_dir}", language="bash")
