"""Evaluation jobs started from the Trust page: ``influence-explorer evaluate <run>`` in the background.

torch-free: the job is a subprocess running the same CLI command the page shows (as
``python -m precompute.cli evaluate ...``), watched by a small supervisor (``python -m
explorer.eval_jobs``, this module) that records the exit status. Files, in ``<run>/evaluation/``::

    job.json         the job record: id, supervisor pid, preset, the command, start time (atomic)
    job.log          the command's stdout + stderr (its stage lines and progress bars)
    job.result.json  written by the supervisor when the command exits: the job id, return code, end time
    .job.lock        held (flock) while a job is being started: two sessions cannot start two jobs

The record outlives the page session, so a reload (or another browser) shows the running job and its
progress. A job is started only by :func:`start` (a button on the page), never by loading a page; its
command is built from the opened run's validated name, the cache folder and a preset name from
:data:`PRESETS`; nothing from the URL goes into it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache_format.atomic import atomic_write_json, pid_alive
from cache_format.evaluation import evaluate_command
from cache_format.names import EVALUATION_DIR, is_safe_name

JOB_FILE = "job.json"
LOG_FILE = "job.log"
RESULT_FILE = "job.result.json"
LOCK_FILE = ".job.lock"
JOB_FORMAT = "influence-explorer-eval-job"
#: the stages ``evaluate`` announces (``[lds] ...``), in order; a preset runs a subset of them
STAGES = ("scores", "lds", "loo", "brittleness", "damping", "agreement")
#: preset -> (label, extra CLI arguments, stages it runs)
PRESETS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "quick": ("Quick: LDS on 16 subsets, no leave-one-out / brittleness / damping sweep (about a minute)",
              ("--lds-subsets", "16", "--lds-bootstrap", "200", "--no-loo", "--no-brittleness", "--no-damping",
               "--workers", "1"),
              ("scores", "lds", "agreement")),
    "full": ("Full: the default evaluation (100 LDS subsets, leave-one-out, brittleness, damping; minutes)",
             (), STAGES),
}
_TQDM = re.compile(r"(\d+)/(\d+) \[")
_STAGE = re.compile(r"^\[(\w+)\] (\.\.\.|done in )")
_procs: dict[int, subprocess.Popen] = {}  # supervisors started by this server (reaped by a thread)


class JobError(RuntimeError):
    """A job that cannot be started (another is running, a bad run name or preset); one-line message."""


@dataclass
class JobStatus:
    """A run's latest job as read from its files. ``state``: running / finished / failed / cancelled /
    lost (the supervisor is gone without a result: killed, or the machine restarted)."""

    id: str
    state: str
    preset: str
    command: str
    started_at: float
    pid: int
    returncode: int | None = None
    finished_at: float | None = None
    log_tail: list[str] = field(default_factory=list)
    stage: str | None = None
    stage_no: int | None = None
    n_stages: int | None = None
    done: int | None = None
    total: int | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.time()) - self.started_at


def job_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / EVALUATION_DIR


def command(run_dir: str | Path, cache_dir: str | Path, preset: str) -> list[str]:
    """The argv of the evaluation of ``run_dir`` (a run folder in ``cache_dir``) with ``preset``."""
    run_dir, cache_dir = Path(run_dir), Path(cache_dir)
    if not is_safe_name(run_dir.name) or run_dir.parent.resolve() != cache_dir.resolve():
        raise JobError(f"{run_dir.name!r} is not a run of the cache folder {cache_dir}; pick a run in the sidebar")
    if run_dir.name.startswith("-"):  # the CLI would read it as an option
        raise JobError(f"run {run_dir.name!r} starts with '-'; rename the run folder to start the evaluation from the page")
    if preset not in PRESETS:
        raise JobError(f"preset {preset!r} is not one of {list(PRESETS)}")
    return [sys.executable, "-m", "precompute.cli", "evaluate", run_dir.name, "--cache-dir", str(cache_dir),
            *PRESETS[preset][1]]


def shown_command(run_name: str, cache_dir: str | Path, preset: str) -> str:
    """The command as the user would type it (``influence-explorer evaluate ...``)."""
    return " ".join([evaluate_command(shlex.quote(run_name)), "--cache-dir", shlex.quote(str(cache_dir)),
                     *PRESETS[preset][1]])


@contextmanager
def _locked(folder: Path):
    import fcntl

    with open(folder / LOCK_FILE, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def start(run_dir: str | Path, cache_dir: str | Path, preset: str) -> JobStatus:
    """Start the evaluation of ``run_dir`` in the background; refuses while one is running for this run."""
    argv = command(run_dir, cache_dir, preset)
    folder = job_dir(run_dir)
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise JobError(f"cannot write to {folder} ({exc.strerror or exc}); make the run folder writable") from None
    with _locked(folder):
        old = status(run_dir)
        if old is not None and old.running:
            raise JobError(f"an evaluation of this run is already running (pid {old.pid}, started "
                           f"{_clock(old.started_at)}); wait for it or cancel it")
        (folder / RESULT_FILE).unlink(missing_ok=True)
        job_id = uuid.uuid4().hex[:12]
        log = open(folder / LOG_FILE, "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "explorer.eval_jobs", str(folder / RESULT_FILE), job_id, "--", *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            log.close()
        _procs[proc.pid] = proc
        threading.Thread(target=_reap, args=(proc,), daemon=True).start()
        atomic_write_json(folder / JOB_FILE, {
            "format": JOB_FORMAT, "id": job_id, "pid": proc.pid, "preset": preset,
            "command": shown_command(Path(run_dir).name, cache_dir, preset), "argv": argv,
            "started_at": time.time()})
    return status(run_dir)


def _reap(proc: subprocess.Popen) -> None:
    proc.wait()
    _procs.pop(proc.pid, None)


def cancel(run_dir: str | Path) -> bool:
    """Ask a running job to stop (SIGTERM to its process group: evaluate unwinds and writes nothing
    half-done); True when one was running."""
    folder = job_dir(run_dir)
    with _locked(folder):
        st = status(run_dir)
        rec = _read(folder / JOB_FILE)
        if st is None or not st.running or rec is None:
            return False
        atomic_write_json(folder / JOB_FILE, {**rec, "cancel_requested_at": time.time()})
    try:
        os.killpg(st.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _alive(pid: int, job_id: str) -> bool:
    """Is ``pid`` this job's supervisor (not a zombie, not a reused pid)?"""
    proc = _procs.get(pid)
    if proc is not None:
        return proc.poll() is None
    if not pid_alive(pid, socket.gethostname()):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the signal check
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and job_id.encode() in cmdline


def status(run_dir: str | Path, tail: int = 12) -> JobStatus | None:
    """The run's latest job (None when the page never started one)."""
    folder = job_dir(run_dir)
    rec = _read(folder / JOB_FILE)
    if rec is None or rec.get("format") != JOB_FORMAT or not isinstance(rec.get("pid"), int):
        return None
    preset = rec.get("preset") if rec.get("preset") in PRESETS else "full"
    res = _read(folder / RESULT_FILE)
    cancelled = "cancel_requested_at" in rec
    st = JobStatus(id=str(rec.get("id")), state="running", preset=preset, command=str(rec.get("command", "")),
                   started_at=float(rec.get("started_at", 0.0)), pid=rec["pid"])
    if res is not None and res.get("id") == st.id:
        st.returncode, st.finished_at = res.get("returncode"), res.get("finished_at")
        st.state = ("finished" if st.returncode == 0 else
                    "cancelled" if st.returncode in (143, -signal.SIGTERM) or cancelled else "failed")
    elif not _alive(st.pid, st.id):
        st.state = "cancelled" if cancelled else "lost"  # killed before it could record (e.g. while starting)
    text = _tail(folder / LOG_FILE)
    st.stage, st.done, st.total, st.log_tail = parse_log(text, tail)
    stages = PRESETS[preset][2]
    if st.stage in stages:
        st.stage_no, st.n_stages = stages.index(st.stage) + 1, len(stages)
    return st


def _tail(path: Path, size: int = 16384) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - size))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def parse_log(text: str, tail: int = 12) -> tuple[str | None, int | None, int | None, list[str]]:
    """(current stage, models done, models to do, last ``tail`` lines) from the end of a job log.

    Progress bars rewrite their line with ``\\r``: only each line's last state is kept; ``done /
    total`` come from the last bar drawn after the latest stage line."""
    lines = [line.split("\r")[-1].strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    raw = [seg for seg in re.split(r"[\r\n]", text) if seg.strip()]
    stage = None
    stage_at = -1
    for n, seg in enumerate(raw):
        m = _STAGE.match(seg.strip())
        if m and m.group(1) in STAGES:
            stage, stage_at = m.group(1), n
    done = total = None
    for seg in raw[stage_at + 1:]:
        m = _TQDM.search(seg)
        if m:
            done, total = int(m.group(1)), int(m.group(2))
    return stage, done, total, lines[-tail:]


def _clock(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%H:%M:%S")


# ------------------------------------------------------------------------------------ supervisor
def _supervise(argv: Sequence[str]) -> int:
    """``python -m explorer.eval_jobs RESULT_FILE JOB_ID -- CMD...``: run CMD, then write RESULT_FILE."""
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m explorer.eval_jobs RESULT_FILE JOB_ID -- CMD ...", file=sys.stderr)
        return 2
    result, job_id, cmd = Path(argv[0]), argv[1], list(argv[3:])
    # SIGTERM reaches the whole process group (cancel): the child unwinds; wait for it and record
    signal.signal(signal.SIGTERM, lambda *_: None)
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    rc = child.wait()
    atomic_write_json(result, {"id": job_id, "returncode": rc, "finished_at": time.time()})
    return 0


if __name__ == "__main__":
    sys.exit(_supervise(sys.argv[1:]))
