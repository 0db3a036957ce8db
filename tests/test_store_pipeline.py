"""The store through the real pipeline: cutting the work differently never changes the cache; a run
killed with SIGKILL mid-store resumes with only the missing chunks; top-k-only runs; compression."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import BUILD_THREADS, QUIET, build_threads

from cache_format.runs import CacheProblem, RunCache
from precompute.config import apply_overrides, load_config
from precompute.pipeline import run_precompute
from precompute.store.gradient_store import MIN_CHUNK_ROWS
from precompute.store.stage import KILL_AFTER_ENV
from sample_data import sample_config_path

ROOT = Path(__file__).resolve().parent.parent
ARRAYS = ("top_proponents", "top_proponent_scores", "top_opponents", "top_opponent_scores", "self_influence",
          "train_net_influence", "train_top_helped", "train_top_helped_scores", "train_top_hurt")


def build(cache: Path, name: str, methods=("graddot", "tracin"), **overrides) -> RunCache:
    cfg = apply_overrides(load_config(sample_config_path("digits")), {
        "name": name, "influence.methods": list(methods), "mislabels.enabled": False, **overrides})
    with build_threads():  # the CLI runs below use the same thread count: the same float32 bits
        return RunCache(run_precompute(cfg, cache_dir=cache, **QUIET).path)


def assert_same_method(a: RunCache, b: RunCache, method: str, dense: bool = True) -> None:
    for name in ARRAYS:
        np.testing.assert_array_equal(a.method_array(method, name), b.method_array(method, name), err_msg=name)
    if dense:
        np.testing.assert_array_equal(a.scores(method), b.scores(method))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> RunCache:
    return build(tmp_path_factory.mktemp("ref"), "ref")


def test_chunk_rows_and_the_budget_do_not_change_the_cache(reference, tmp_path):
    small = build(tmp_path, "small", chunk_rows=100, memory_budget="64MB")
    assert small.manifest["methods"]["graddot"]["store"]["chunks"] == 15  # 1437 rows / 100
    assert reference.manifest["methods"]["graddot"]["store"]["chunks"] == -(-1437 // MIN_CHUNK_ROWS)  # the default
    for m in ("graddot", "tracin"):
        assert_same_method(reference, small, m)
    assert not list(tmp_path.glob(".small.work-*"))  # the work folder is removed once the run is complete


def test_topk_only_keeps_the_same_topk_and_says_so(reference, tmp_path):
    run = build(tmp_path, "topk", **{"influence.store_scores": "topk"})
    assert run.manifest["methods"]["graddot"]["scores"] == "topk" and not run.has_dense_scores("graddot")
    assert not (run.path / "methods" / "graddot" / "scores.npy").exists()
    with pytest.raises(CacheProblem, match="top-k"):
        run.scores("graddot")
    for m in ("graddot", "tracin"):
        assert_same_method(reference, run, m, dense=False)
    _pages_say_topk_only(run.path.parent, run.name)


def _pages_say_topk_only(cache: Path, name: str) -> None:
    """The app opens a top-k-only run: influence cards as usual, and the pages that need full rows say so."""
    from streamlit.testing.v1 import AppTest

    from explorer import state

    os.environ[state.CACHE_ENV] = str(cache)
    try:
        for page, extra, needle in (("influence", {}, "Test #4"), ("compare", {"a": "graddot", "b": "tracin"}, "top-k"),
                                    ("embedding", {"color": "influence", "method": "graddot"}, "top-k")):
            at = AppTest.from_file(str(ROOT / "explorer" / "app.py"), default_timeout=60)
            at.query_params.update({"page": page, "run": name, "test": "4", **extra})
            at.run()
            assert not at.exception, [e.value for e in at.exception]
            text = "\n".join(str(e.value) for kind in ("title", "info", "metric") for e in at.get(kind))
            assert needle in text, (page, text[:500])
    finally:
        os.environ.pop(state.CACHE_ENV, None)


def _cli(cache: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "precompute.cli", "precompute", "--sample", "digits", "--cache-dir", str(cache),
           "--name", "killed", "--methods", "graddot,tracin", "--no-mislabels", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": str(BUILD_THREADS), **env}
    return subprocess.run(cmd + ["--chunk-rows", "200"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_kill_9_mid_store_then_rerun_computes_only_the_missing_chunks(reference, tmp_path):
    first = _cli(tmp_path, {KILL_AFTER_ENV: "3"})
    assert first.returncode == -9, first.stderr[-2000:]  # SIGKILL after 3 chunks of graddot's 8
    assert not (tmp_path / "killed").exists() and list(tmp_path.glob(".killed.work-*"))
    second = _cli(tmp_path, {})
    assert second.returncode == 0, second.stderr[-2000:]
    line = re.search(r"\[graddot\] resumed: (\d+) of (\d+) store chunks were complete; computed chunks (.*)",
                     second.stderr)
    assert line and line.groups() == ("3", "8", "3-7"), second.stderr[-3000:]
    assert "[tracin] resumed" not in second.stderr  # tracin had not started: computed whole, not "resumed"
    run = RunCache(tmp_path / "killed")
    assert run.manifest["methods"]["graddot"]["store"]["chunks_computed"] == 5
    for m in ("graddot", "tracin"):
        assert_same_method(reference, run, m)
    assert not list(tmp_path.glob(".killed.work-*"))
