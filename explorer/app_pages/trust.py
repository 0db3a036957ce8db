"""Trust: how far to trust each influence method on this run, measured by ``influence-explorer evaluate``.

The run comes from ``ui.require_run()`` (``?run=<name>``, picked in the sidebar); everything shown
is read from ``<run>/evaluation/`` by :mod:`cache_format.evaluation`. The page can start the
evaluation itself (a button, never on load): a background job (:mod:`explorer.eval_jobs`) whose
progress it polls every 2 s and which a reload finds again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from cache_format.evaluation import (
    TrustResults,
    counterfactual_sentence,
    evaluate_command,
    load_trust,
)
from cache_format.runs import RunCache
from components.trust_figures import (
    agreement_figure,
    brittleness_figure,
    damping_figure,
    lds_figure,
    loo_figure,
)
from explorer import eval_jobs, ui
from explorer.page_spec import PageSpec
from explorer.state import cache_dir
from explorer.text import md_escape

PAGE = PageSpec(key="trust", title="Trust", icon=":material/verified:", order=70, params=("run",))


def _fmt(v, digits: int = 3) -> str:
    """A number with ``digits`` decimals; "–" for none, NaN or anything that is not a number."""
    if not isinstance(v, int | float | np.number) or isinstance(v, bool) or not np.isfinite(v):
        return "–"
    return f"{v:.{digits}f}"


def _method_table(tr: TrustResults) -> None:
    t = tr.method_table()
    shown = pd.DataFrame({
        "method": t["method"],
        "LDS [95% CI]": [f"{_fmt(a)} [{_fmt(b)}, {_fmt(c)}]" if a is not None and np.isfinite(a) else "–"
                         for a, b, c in zip(t["LDS"], t["LDS low"], t["LDS high"], strict=True)],
        "LDS (margin)": t["LDS (margin)"].map(_fmt),
        "LOO Pearson": t["LOO Pearson"].map(_fmt),
        "LOO Spearman": t["LOO Spearman"].map(_fmt),
        "mislabel ROC-AUC": t["mislabel ROC-AUC"].map(_fmt),
        "damping (run / best)": [f"{_g(a)} / {_g(b)}" if b is not None and b == b else "–"
                                 for a, b in zip(t["damping used"], t["best damping"], strict=True)],
        "compute time": t["compute s"].map(lambda v: "–" if v is None or v != v else f"{v:.1f} s"),
    })
    st.dataframe(shown, hide_index=True, width="stretch", height=35 * (len(shown) + 1) + 3)
    if t["LDS"].notna().any():
        st.plotly_chart(lds_figure(t), width="stretch", key="trust_lds")


def _g(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    return f"{v:g}" if isinstance(v, int | float) else str(v)


def _explain(tr: TrustResults) -> None:
    lds = tr.part("lds") or {}
    loo = tr.part("loo") or {}
    s = lds.get("settings", {})
    lines = []
    if lds:
        lines.append(f"**LDS** (linear datamodeling score): the model was retrained on {md_escape(lds.get('subsets'))} "
                     f"random subsets of {_pct(s.get('fraction', 0.5))} of the training data "
                     f"({md_escape(s.get('repeats', 1))} seed(s) each). "
                     "For each test point, LDS is the Spearman correlation between a method's predicted effect of a "
                     "subset (sum of its scores) and the retrained model's (negative) test loss; the mean over test "
                     "points is shown with a bootstrap 95% interval. 1 = perfect ranking, 0 = random.")
    if loo:
        lines.append("**LOO**: correlation between the predicted change of test loss when one training sample is "
                     "removed (score / n) and the change after actually retraining without it"
                     + (" (converged retraining: meaningful for this convex model)." if loo.get("meaningful") else
                        ". **Not meaningful for this non-convex model**: retraining noise dominates the tiny "
                        "single-sample effects."))
    if lines:
        st.caption("  \n".join(lines))


def _pct(v) -> str:
    return f"{v:.0%}" if isinstance(v, int | float) else md_escape(v)


def _damping(tr: TrustResults) -> None:
    frame = tr.damping_frame()
    if frame.empty:
        return
    st.subheader("Damping sensitivity")
    st.caption("Influence estimates are fragile in the damping lambda of (H + lambda I): the same method can go from "
               "good to near-random with one value. Star: best lambda; ring: the run's own value. Rebuild with the "
               "best one: `influence-explorer precompute ... --damping from-eval`.")
    st.plotly_chart(damping_figure(frame), width="stretch", key="trust_damping")
    errs = frame[frame["error"].notna() & (frame["error"] != "")]
    if len(errs):
        with st.expander(f"{len(errs)} lambda value(s) failed"):
            st.dataframe(errs[["method", "damping", "error"]], hide_index=True, width="stretch")


def _agreement(tr: TrustResults) -> None:
    ag = tr.agreement()
    if not ag or len(ag.get("methods", [])) < 2:
        return
    st.subheader("Method agreement")
    which = st.radio("Measure", ["spearman", "topk_overlap"], horizontal=True, key="trust_agree_which",
                     format_func=lambda w: "mean Spearman of score rows" if w == "spearman"
                     else f"top-{md_escape(ag.get('k'))} proponent overlap")
    st.plotly_chart(agreement_figure(ag, which), width="stretch", key="trust_agreement")
    st.caption(f"Over {md_escape(ag.get('n_test'))} test points. Methods that disagree cannot both be right; LDS above says "
               "which one matches retraining.")


def _brittleness(tr: TrustResults, run: RunCache) -> None:
    b = tr.part("brittleness")
    if not b:
        return
    st.subheader("Brittleness: removing the top proponents")
    rnd = b.get("random") or {}
    st.caption(f"For {len(b['tests'])} correctly classified test points, the top-k proponents of each method were "
               f"removed and the model retrained; the grey line removes k random samples instead "
               f"({md_escape(rnd.get('tries', 0))} tries each). A trustworthy method flips far more predictions than random removal.")
    st.plotly_chart(brittleness_figure(tr.brittleness_frame()), width="stretch", key="trust_brittle")
    rows = []
    samples = run.test_samples()
    names = tr.class_names
    for t in b["tests"]:
        label = int(samples.loc[t, "label"]) if t in samples.index else None
        rows.append({"test point": t, "label": names[label] if label is not None and label < len(names) else "",
                     "what happened": counterfactual_sentence(run, t) or ""})
    with st.expander("Per test point", expanded=False):
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def _loo_plot(tr: TrustResults) -> None:
    loo = tr.part("loo")
    if not loo or not loo.get("methods"):
        return
    methods = [m for m in loo["methods"] if m in tr.manifest.get("methods", {})]
    if not methods:
        return
    with st.expander("Leave-one-out: predicted vs actual", expanded=False):
        best = tr.best_method()
        m = st.selectbox("Method", methods, index=methods.index(best) if best in methods else 0, key="trust_loo_m")
        pairs = tr.loo_pairs(m)
        if pairs is not None:
            st.plotly_chart(loo_figure(pairs[0], pairs[1], m), width="stretch", key="trust_loo")


def _mislabels(tr: TrustResults) -> None:
    mis = tr.mislabels()
    if not mis or not mis.get("other"):
        return
    with st.expander("Mislabel detection: other rankings", expanded=False):
        st.caption(f"Source: {md_escape(mis.get('source'))}. {md_escape(mis.get('n_flipped', '?'))} training labels "
                   "were flipped.")
        st.dataframe(pd.DataFrame(mis["other"]).T, width="stretch")


# ------------------------------------------------------------------------------ evaluation jobs
_WATCH = "trust_job_watch"  # session: the id of the job this session saw running


def _start(run_dir: Path, preset: str) -> None:
    try:
        eval_jobs.start(run_dir, cache_dir(), preset)
    except eval_jobs.JobError as exc:
        st.session_state["trust_job_error"] = str(exc)


def _job_lines(job: eval_jobs.JobStatus) -> None:
    """The log tail of a job, as text (the command's own output)."""
    st.code("\n".join(job.log_tail) or "(no output yet)", language=None)


@st.fragment(run_every=2)
def _job_progress(run_dir: Path) -> None:
    """A running job's stage and progress, redrawn every 2 s; the whole page reruns once it ends."""
    job = eval_jobs.status(run_dir)
    if job is None:
        return
    if not job.running:
        if st.session_state.pop(_WATCH, None) == job.id:
            st.rerun(scope="app")  # it just ended: show the results
        return
    st.session_state[_WATCH] = job.id
    with st.container(border=True):
        stage = (f"stage {job.stage_no} of {job.n_stages}: {job.stage}" if job.stage_no else
                 job.stage or "starting (loading the run and torch)")
        st.markdown(f"**Evaluation running** ({md_escape(eval_jobs.PRESETS[job.preset][0].split(':')[0])}, "
                    f"{job.elapsed:.0f} s) · {md_escape(stage)}")
        if job.total:
            st.progress(min(1.0, (job.done or 0) / job.total), text=f"{job.done} / {job.total} models retrained")
        _job_lines(job)
        st.caption(f"{ui.md_code(job.command)} · pid {job.pid} · the job keeps running if you close or reload the page")
        st.button("Cancel the evaluation", key="trust_job_cancel", icon=":material/cancel:",
                  on_click=eval_jobs.cancel, args=(run_dir,))


def _job_news(job: eval_jobs.JobStatus | None, evaluated: bool) -> None:
    """How the last job started from the page ended (an error of the last start, a failure, a success)."""
    if "trust_job_error" in st.session_state:
        st.error(md_escape(st.session_state.pop("trust_job_error")))
    if job is None or job.running:
        return
    if job.state != "finished":
        what = {"failed": f"failed (exit code {job.returncode})", "cancelled": "was cancelled",
                "lost": "stopped without finishing (its process is gone)"}[job.state]
        st.warning(f"The evaluation started at {eval_jobs._clock(job.started_at)} {what}. The end of its output:")
        _job_lines(job)
    elif evaluated:
        st.success(f"Evaluated from this page at {eval_jobs._clock(job.finished_at or job.started_at)} "
                   f"({md_escape(job.preset)} preset, {job.elapsed:.0f} s).")


def _start_form(run: RunCache, evaluated: bool) -> None:
    """The preset, the exact command, and the button that starts it in the background."""
    presets = list(eval_jobs.PRESETS)
    preset = st.radio("Evaluation", presets, index=presets.index("full" if evaluated else "quick"),
                      key="trust_preset", format_func=lambda p: eval_jobs.PRESETS[p][0])
    st.code(eval_jobs.shown_command(run.path.name, cache_dir(), preset), language="bash")
    st.button("Run the evaluation again" if evaluated else "Start the evaluation", key="trust_job_start",
              type="primary", icon=":material/play_arrow:", on_click=_start, args=(run.path, preset),
              help="runs the command above in the background; you can keep browsing, the page shows its progress")


def _lds_line(tr: TrustResults) -> None:
    """``LDS: exact 0.95 · graddot 0.37 · ...``: every evaluated method beside its LDS."""
    t = tr.method_table()
    parts = [f"{md_escape(m)} **{_fmt(v, 2)}**" for m, v in zip(t["method"], t["LDS"], strict=True) if v == v]
    if parts:
        st.markdown("LDS by method: " + " · ".join(parts))


def main() -> None:
    """The selected run's evaluation: per-method table, damping, brittleness, agreement; or how to make it."""
    run = ui.require_run()
    name = run.path.name
    shown = md_escape(name)
    st.title("Trust")
    st.caption("How far to trust each influence method on this run: measured against real retraining of the "
               "run's own model, with its own recipe and seed.")
    tr = load_trust(run)
    job = eval_jobs.status(run.path)
    running = job is not None and job.running
    if running:
        _job_progress(run.path)
    _job_news(job, tr is not None and not tr.stale)
    if tr is None:
        st.info(f"Run **{shown}** has not been evaluated yet. Measure it here or in a terminal with:"
                if not running else f"Run **{shown}** is being evaluated; the results appear here when it ends.")
        if not running:
            _start_form(run, evaluated=False)
            st.caption("Retrains the model on random subsets of its training data (LDS), without single samples "
                       "(leave-one-out) and without each test point's top proponents (brittleness); a few minutes "
                       "on a laptop for the digits samples. Parts can be switched off, e.g. `--no-loo`.")
        return
    if tr.stale:
        st.warning(f"The evaluation in {ui.md_code(name + '/evaluation')} was made for another model or dataset than "
                   f"this run's. Re-run: {ui.md_code(evaluate_command(name))}.")
        if not running:
            _start_form(run, evaluated=False)
        return
    best = tr.best_method()
    if best:
        v = tr.lds(best) or {}
        ci = v.get("ci") or [None, None]
        st.markdown(f"Best method on **{shown}**: **{md_escape(best)}**, LDS **{_fmt(v.get('lds'), 2)}** "
                    f"[{_fmt(ci[0], 2)}, {_fmt(ci[1], 2)}]."
                    + ("" if tr.data.get("convex") else " (Non-convex model: influence is an approximation here.)"))
    _lds_line(tr)
    _method_table(tr)
    _explain(tr)
    _loo_plot(tr)
    _damping(tr)
    _brittleness(tr, run)
    _agreement(tr)
    _mislabels(tr)
    if not running:
        with st.expander("Run the evaluation again", expanded=False):
            _start_form(run, evaluated=True)
    with st.expander("Settings and timings", expanded=False):
        st.json({"settings": tr.data.get("settings"), "timings_s": tr.data.get("timings"),
                 "updated": tr.data.get("updated"), "models retrained in the last call": tr.data.get("last_retrained")},
                expanded=False)

