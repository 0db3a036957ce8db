"""Damaged and hostile caches (tests/hostile_caches.py) against the reader and every page of the app.

Each variant must give the friendly problem page (naming the bad file, relative to the cache folder,
and the rebuild command) or render safely; never an exception, a traceback or a read outside the run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hostile_caches import BY_NAME, VARIANTS, make_hostile_caches
from streamlit.testing.v1 import AppTest

from cache_format.runs import CacheProblem, RunCache, list_runs
from cache_format.validate import check_run, npy_header, open_checked, safe_rel_path
from explorer import page_spec, state
from explorer.help import _TITLES

APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")
PAGES = [p.spec.key for p in page_spec.discover()]
DAMAGED = [v.name for v in VARIANTS if v.names is not None]
SELECTION = {"test": "42", "train": "7", "method": "exact"}


@pytest.fixture(scope="module")
def hostile(digits_run: Path, tmp_path_factory) -> dict[str, Path]:
    """Every hostile variant of the session's digits run, written once for this module."""
    return make_hostile_caches(digits_run, tmp_path_factory.mktemp("hostile"))


def _texts(at: AppTest) -> list[str]:
    kinds = ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success", "code")
    return [str(e.value) for kind in kinds for e in at.get(kind)]


def _open(cache: Path, monkeypatch, **params: str) -> AppTest:
    monkeypatch.setenv(state.CACHE_ENV, str(cache))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(params)
    at.session_state["reviewer"] = "tester"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_good_run_passes_and_the_check_is_cheap(digits_run: Path):
    import time

    run = RunCache(digits_run)
    t0 = time.perf_counter()
    assert check_run(run) is run
    assert time.perf_counter() - t0 < 2.0
    assert "samples" in run.__dict__  # samples.parquet read once, by the check
    shape, dtype, offset = npy_header(digits_run / "methods/exact/scores.npy")
    assert shape == (run.n_test, run.n_train) and dtype == np.float32 and offset % 64 == 0


@pytest.mark.parametrize("variant", [v.name for v in VARIANTS])
def test_reader_names_the_bad_file_or_opens(hostile: dict[str, Path], variant: str):
    v, path = BY_NAME[variant], hostile[variant]
    if v.names is None:
        assert open_checked(path).name == variant
        return
    with pytest.raises(CacheProblem) as exc:
        open_checked(path)
    msg = exc.value.message
    assert v.names in msg and "Rebuild it with: " in msg and "\n" not in msg, msg
    assert exc.value.kind in ("damaged", "incomplete")
    if msg.startswith("this run is damaged"):  # the checker's messages: paths relative to the cache folder
        assert f"{variant}/" in msg and str(path.parent) not in msg


def test_manifest_paths_never_leave_the_run(hostile: dict[str, Path], tmp_path: Path):
    for variant in ("method-traversal", "method-absolute"):
        with pytest.raises(CacheProblem, match="not a method name"):
            RunCache(hostile[variant])  # the reader refuses the manifest before any array is touched
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "secret.npy").write_bytes(b"x")
    (run / "link.npy").symlink_to(tmp_path / "secret.npy")
    for rel in ("../secret.npy", "/etc/passwd", "a/../../secret.npy", ".hidden/x.npy", "a\\..\\b", "", None, 3):
        with pytest.raises(ValueError, match="not a relative path inside the run"):
            safe_rel_path(run, rel)
    with pytest.raises(ValueError, match="symbolic link"):
        safe_rel_path(run, "link.npy")
    assert safe_rel_path(run, "methods/exact/scores.npy") == run / "methods" / "exact" / "scores.npy"


def test_runs_page_lists_each_damaged_run_as_not_ok(hostile: dict[str, Path], monkeypatch):
    from explorer.ui import runs

    for variant in ("truncated-scores", "ids-out-of-range", "no-dataset", "short-class-list", "markdown"):
        cache = hostile[variant].parent
        listed = runs(str(cache))
        assert [r.name for r in listed] == [variant]
        assert listed[0].ok is (variant == "markdown")
        assert list_runs(cache)[0].ok is (variant not in ("no-dataset",))  # manifest-only checks pass the rest
        at = _open(cache, monkeypatch, page="runs")
        if variant == "markdown":
            assert not at.warning
            continue
        assert "Runs that cannot be opened" in [s.value for s in at.subheader]
        assert any(BY_NAME[variant].names.replace("_", "&#95;") in w.value for w in at.warning), variant
        assert all(str(cache) not in w.value for w in at.warning)  # no server path in the message
        assert any(f"--name {variant} --overwrite" in c.value for c in at.code)


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("variant", DAMAGED)
def test_every_page_shows_the_friendly_problem(hostile: dict[str, Path], monkeypatch, variant: str, page: str):
    at = _open(hostile[variant].parent, monkeypatch, page=page, run=variant, **SELECTION)
    texts = _texts(at)
    if page == "runs":
        assert "Runs that cannot be opened" in texts
        return
    assert at.title[0].value in (_TITLES["damaged"], _TITLES["incomplete"]), texts
    named = BY_NAME[variant].names.replace("_", "&#95;")
    assert any(named in e.value for e in at.error), [e.value for e in at.error]
    assert any(f"--name {variant} --overwrite" in c.value for c in at.code)
    assert not any("Traceback" in t or 'File "/' in t for t in texts)


@pytest.mark.parametrize("variant", ["truncated-scores", "no-dataset", "missing-samples"])
def test_a_fresh_session_without_a_run_explains_that_none_can_be_opened(hostile, monkeypatch, variant: str):
    at = _open(hostile[variant].parent, monkeypatch, page="influence")
    assert at.title[0].value == "No run here can be opened"
    assert any(variant in w.value for w in at.warning)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_the_markdown_variant(hostile: dict[str, Path], monkeypatch, page: str):
    at = _open(hostile["markdown"].parent, monkeypatch, page=page, run="markdown", **SELECTION)
    assert at.title or at.header
    assert not at.error, [e.value for e in at.error]


def test_a_file_removed_after_opening_gives_the_problem_page(digits_run: Path, tmp_path: Path, monkeypatch):
    """A run is re-checked when its folders change; a file that vanishes unnoticed (its folder's time
    put back) still gives the friendly page, from the app's guard around every page."""
    import os

    from helpers import copy_run

    run = copy_run(digits_run, tmp_path)
    at = _open(tmp_path, monkeypatch, page="influence", run=run.name, test="3")
    assert at.title[0].value.startswith("Test #3")
    folder = run / "methods" / "exact"
    (folder / "train_top_hurt.npy").unlink()  # noticed: the folder changed, the run is checked again
    at.query_params["train"] = "5"
    at.run()
    assert not at.exception and at.title[0].value == _TITLES["incomplete"]
    assert any("train&#95;top&#95;hurt.npy is missing" in e.value for e in at.error)
    shutil.copyfile(digits_run / "methods" / "exact" / "train_top_hurt.npy", folder / "train_top_hurt.npy")
    at.run()
    assert at.title[0].value.startswith("Training sample #5")  # repaired: the run opens again
    other = run / "methods" / "graddot"  # not opened yet: no memory map keeps the file alive
    stamp = other.stat()
    (other / "train_top_helped.npy").unlink()
    os.utime(other, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # unnoticed by the check
    at.query_params["method"] = "graddot"
    at.run()
    assert not at.exception
    assert at.title[-1].value == _TITLES["incomplete"]
    assert any("train&#95;top&#95;helped.npy is missing" in e.value for e in at.error)
