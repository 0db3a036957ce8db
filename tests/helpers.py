"""Small helpers shared by several test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

QUIET = {"progress": False, "log": lambda _m: None}


def copy_run(run: Path, dst: Path) -> Path:
    """A private copy of a built run (without any evaluation), so tests do not share results."""
    out = dst / run.name
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("evaluation"))
    return out


#: torch's intra-op thread count at session start: every session run is built with it, so a rebuild
#: later in the session (whatever thread count the test before it left) gives bit-identical weights
BUILD_THREADS = torch.get_num_threads()


@contextmanager
def build_threads() -> Iterator[None]:
    """Build runs with :data:`BUILD_THREADS` threads (float reductions depend on the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one intra-op thread; restores the previous setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextmanager
def serving(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60) -> Iterator[str]:
    """Wait until the Streamlit server ``proc`` answers its health check on ``port``; yield its base URL;
    stop it afterwards. Fails with the end of ``log`` if it exits or never becomes healthy."""
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("the app did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")


def open_app(cache: Path, monkeypatch, **params: object):
    """An AppTest of the explorer on ``cache`` with these query parameters, run once without exceptions."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(cache))
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = str(v)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@contextmanager
def review_page(run: Path, monkeypatch, reviewer: str | None = None) -> Iterator[tuple]:
    """``(AppTest of the review page on run, its decisions database)``, starting from no decisions and
    removing them afterwards."""
    from streamlit.testing.v1 import AppTest

    from explorer.annotations import db_path

    db = db_path(run.parent, run.name)
    files = (db, Path(f"{db}-wal"), Path(f"{db}-shm"))
    for p in files:
        p.unlink(missing_ok=True)
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(run.parent))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"page": "review", "run": run.name})
    if reviewer is not None:
        at.session_state["reviewer"] = reviewer
    try:
        yield at, db
    finally:
        for p in files:
            p.unlink(missing_ok=True)
