"""Evaluation jobs started from the Trust page: the job record, its progress, one job per run, and the
page (AppTest) running a real quick ``evaluate`` on a copy of the digits-logreg run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import copy_run
from streamlit.testing.v1 import AppTest

from cache_format.evaluation import load_trust
from explorer import eval_jobs

APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")


def test_progress_is_read_from_the_log_tail():
    log = ("[scores] ...\n[scores] done in 0.4s\n[lds] ...\n"
           "lds retrain:   0%|          | 0/16 [00:00<?, ?model/s]\rlds retrain:  44%|####  | 7/16 [00:20<00:14]"
           "\rlds retrain:  81%|######## | 13/16 [00:21<00:01]")
    stage, done, total, lines = eval_jobs.parse_log(log)
    assert (stage, done, total) == ("lds", 13, 16)
    assert lines[-1].startswith("lds retrain:  81%") and lines[:2] == ["[scores] ...", "[scores] done in 0.4s"]
    stage, done, total, _ = eval_jobs.parse_log(log + "\n[lds] done in 3.0s\n[agreement] ...\n")
    assert (stage, done, total) == ("agreement", None, None)  # no bar since the latest stage line
    assert eval_jobs.parse_log("") == (None, None, None, [])


def test_the_command_is_built_from_validated_names_only(tmp_path):
    run = tmp_path / "digits"
    run.mkdir()
    argv = eval_jobs.command(run, tmp_path, "quick")
    assert argv[:6] == [sys.executable, "-m", "precompute.cli", "evaluate", "digits", "--cache-dir"]
    assert "--no-loo" in argv and "--trust-code" not in argv
    assert eval_jobs.shown_command("digits", tmp_path, "full") == f"influence-explorer evaluate digits --cache-dir {tmp_path}"
    for bad_run, cache, preset in ((tmp_path / "-rf", tmp_path, "quick"), (tmp_path / ".hidden", tmp_path, "quick"),
                                   (run, tmp_path / "elsewhere", "quick"), (run, tmp_path, "quick; rm -rf /")):
        with pytest.raises(eval_jobs.JobError):
            eval_jobs.command(bad_run, cache, preset)


def test_a_job_whose_process_is_gone_is_reported_lost(tmp_path):
    run = tmp_path / "r"
    (run / "evaluation").mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (run / "evaluation" / eval_jobs.JOB_FILE).write_text(json.dumps({
        "format": eval_jobs.JOB_FORMAT, "id": "abc", "pid": gone.pid, "preset": "quick", "command": "x",
        "started_at": time.time()}))
    st = eval_jobs.status(run)
    assert st is not None and st.state == "lost" and not st.running
    assert eval_jobs.status(tmp_path / "never-evaluated") is None


def _wait(run: Path, timeout: float = 120) -> eval_jobs.JobStatus:
    deadline = time.time() + timeout
    while (st := eval_jobs.status(run)) is not None and st.running:
        assert time.time() < deadline, "\n".join(st.log_tail)
        time.sleep(0.3)
    return st


def _page(root: Path, run: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(root))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"page": "trust", "run": run})
    return at


def test_the_page_starts_a_job_follows_it_across_a_reload_and_shows_the_lds(logreg_run, tmp_path, monkeypatch):
    run = copy_run(logreg_run, tmp_path)
    at = _page(tmp_path, run.name, monkeypatch).run()
    assert not at.exception
    assert eval_jobs.status(run) is None  # loading the page starts nothing
    assert at.radio(key="trust_preset").value == "quick"
    assert any("--no-loo" in c.value and f"evaluate {run.name}" in c.value for c in at.code)
    at.button(key="trust_job_start").click().run()
    assert not at.exception, at.exception
    job = eval_jobs.status(run)
    assert job is not None and job.preset == "quick"
    rec = json.loads((run / "evaluation" / eval_jobs.JOB_FILE).read_text())
    assert rec["pid"] == job.pid and rec["argv"][3:5] == ["evaluate", run.name]
    if job.running:  # (it runs for several seconds: python and torch start first)
        with pytest.raises(eval_jobs.JobError, match="already running"):
            eval_jobs.start(run, tmp_path, "quick")  # one job per run
        reload = _page(tmp_path, run.name, monkeypatch).run()  # a new session (a reload) finds the job
        if eval_jobs.status(run).running:  # still running after the reload was drawn
            assert any("Evaluation running" in m.value for m in reload.markdown)
            assert not [b for b in reload.button if b.key == "trust_job_start"]
    done = _wait(run)
    assert done.state == "finished" and done.returncode == 0, "\n".join(done.log_tail)
    at.run()
    assert not at.exception, at.exception
    tr = load_trust(run)
    assert tr is not None and tr.lds("exact")["lds"] > 0.8
    line = next(m.value for m in at.markdown if m.value.startswith("LDS by method:"))
    for method in ("exact", "graddot", "gradcos", "tracin"):
        assert f"{method} **{tr.lds(method)['lds']:.2f}**" in line
    assert any("Evaluated from this page" in s.value for s in at.success)


def test_a_job_can_be_cancelled(logreg_run, tmp_path):
    run = copy_run(logreg_run, tmp_path)
    eval_jobs.start(run, tmp_path, "quick")
    assert eval_jobs.cancel(run)
    st = _wait(run, 60)
    assert st.state == "cancelled", (st.state, st.returncode, st.log_tail)
    assert load_trust(run) is None  # nothing half-written
    assert not eval_jobs.cancel(run)
