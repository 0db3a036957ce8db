"""Crash consistency (issue 14): a precompute killed at any step of finalize's swap, or by SIGTERM,
leaves one visible run (the new one, or the old one untouched), never loses the carried ground
truth, and its partial/hidden folders are cleaned up by the next run. Real signals throughout: the
crash windows are hit with the test-only hook ``INFLUENCE_EXPLORER_TEST_KILL_AT`` (SIGKILL at a step).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cache_format.atomic import KILL_AT_ENV, OWNER_FILE, recover_swaps
from precompute.cache.writer import existing_run_status

REPO = Path(__file__).resolve().parent.parent
GT = "evaluation/groundtruth/lds-abc/meta.json"

#: a writer process: builds the run "new" into <cache>/run (over an old run) and finalizes it
WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from precompute.cache.writer import CacheWriter
    w = CacheWriter(sys.argv[1])
    w.save_array("x", np.arange(6, dtype=np.float32))
    w.finalize({"name": "run", "config": {"tag": "new"}})
""")


def _old_run(cache: Path) -> Path:
    run = cache / "run"
    (run / GT).parent.mkdir(parents=True)
    (run / GT).write_text('{"key": "abc"}')
    (run / "evaluation" / "results.json").write_text("{}")
    (run / "manifest.json").write_text(json.dumps({"format_version": 2, "config": {"tag": "old"}}))
    return run


def _writer(run: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRITER, str(run)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=120)


def _tag(run: Path) -> str:
    return json.loads((run / "manifest.json").read_text())["config"]["tag"]


def _hidden(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("step", ["journal", "old-aside", "new-in-place", "carried"])
@pytest.mark.parametrize("recover", ["next-run", "reader", "app"])
def test_kill_during_swap_is_finished_by_the_next_run_or_the_reader(tmp_path: Path, step: str, recover: str):
    run = _old_run(tmp_path)
    proc = _writer(run, {KILL_AT_ENV: step})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert any(n.endswith(".swap.json") for n in _hidden(tmp_path))  # the interrupted swap is on record
    if recover == "next-run":
        assert existing_run_status(run, {"tag": "new"}) == "same"
    elif recover == "app":  # the explorer's run list (cached for 10 s; cleared here) finishes it too
        from explorer import ui

        ui.runs.clear()
        assert "run" in [r.name for r in ui.runs(str(tmp_path))]
    else:
        assert recover_swaps(tmp_path) == ["run"]
    assert _tag(run) == "new"  # rolled forward: the complete new run is in place
    assert (run / GT).read_text() == '{"key": "abc"}'  # ground truth carried, never lost
    assert not (run / "evaluation" / "results.json").exists()  # it scored the old run
    assert _hidden(tmp_path) == []  # no journal, old or partial folder left
    assert not (run / OWNER_FILE).exists()


def test_uninterrupted_swap_replaces_the_run_and_carries_ground_truth(tmp_path: Path):
    run = _old_run(tmp_path)
    proc = _writer(run)
    assert proc.returncode == 0, proc.stderr
    assert _tag(run) == "new" and (run / GT).is_file() and _hidden(tmp_path) == []


def test_recovery_leaves_a_live_writers_swap_alone(tmp_path: Path):
    """A journal whose process is alive (here: this one) is not touched by a reader."""
    run = _old_run(tmp_path)
    journal = {"pid": os.getpid(), "host": socket.gethostname(), "final": "run", "new": ".run.partial-1",
               "old": ".run.old-1-1", "carry": []}
    (tmp_path / ".run.swap.json").write_text(json.dumps(journal))
    assert recover_swaps(tmp_path) == []
    assert _tag(run) == "old" and (tmp_path / ".run.swap.json").exists()


def test_hand_made_journal_cannot_move_other_folders(tmp_path: Path):
    _old_run(tmp_path)
    (tmp_path / "precious").mkdir()
    journal = {"pid": 999999999, "host": socket.gethostname(), "final": "run", "new": "../precious",
               "old": "precious", "carry": ["../../etc"]}
    (tmp_path / ".run.swap.json").write_text(json.dumps(journal))
    assert recover_swaps(tmp_path) == []
    assert (tmp_path / "precious").is_dir() and _tag(tmp_path / "run") == "old"


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_stale_partials_of_dead_processes_are_removed_and_only_those(tmp_path: Path):
    # a writer SIGKILLed while computing (before finalize) leaves its partial folder
    killed = subprocess.run([sys.executable, "-c", "import os, signal, sys\nfrom precompute.cache.writer import "
                             "CacheWriter\nCacheWriter(sys.argv[1])\nos.kill(os.getpid(), signal.SIGKILL)",
                             str(tmp_path / "run")], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert killed.returncode == -signal.SIGKILL
    partials = [p for p in tmp_path.iterdir() if p.name.startswith(".run.partial-")]
    assert len(partials) == 1 and (partials[0] / OWNER_FILE).is_file()
    host = socket.gethostname()
    live, foreign, unowned = (tmp_path / f".run.partial-{n}" for n in ("live", "foreign", "unowned"))
    for d, owner in ((live, {"pid": os.getpid(), "host": host}), (foreign, {"pid": _dead_pid(), "host": "elsewhere"}),
                     (unowned, None)):
        d.mkdir()
        if owner:
            (d / OWNER_FILE).write_text(json.dumps(owner))
    other = tmp_path / ".other.partial-1"
    other.mkdir()
    (other / OWNER_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": host}))
    assert existing_run_status(tmp_path / "run", {}) == "absent"
    assert not partials[0].exists()  # provably ours and dead: removed
    assert live.is_dir() and foreign.is_dir() and unowned.is_dir() and other.is_dir()  # not provably dead / not ours


def test_sigterm_removes_the_partial_run_and_exits_non_zero(tmp_path: Path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('name = "tiny"\n[model]\narch = "logreg"\nhidden = []\n[train]\nepochs = 400\n'
                   '[influence]\nmethods = ["graddot"]\n[mislabels]\nenabled = false\n')
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "precompute.cli", "precompute", "--config", str(cfg),
                             "--cache-dir", str(cache), "--no-progress"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while time.time() < deadline and not (cache.is_dir() and any(cache.glob(".tiny.partial-*"))):
        time.sleep(0.1)
    assert any(cache.glob(".tiny.partial-*")), "the partial folder never appeared"
    time.sleep(0.5)  # inside the run (data/training)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("error: terminated (SIGTERM)")
    assert "Traceback" not in err
    assert sorted(p.name for p in cache.iterdir()) == []  # no partial folder, no run
