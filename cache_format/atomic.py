"""Crash-safe writes: a file or folder appears whole under its final name, or not at all.

Every writer of the cache (precompute's run writer, evaluate's results and ground truth, the
annotation exports) goes through these: write to a hidden temporary name in the same folder,
flush and fsync, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

#: test-only crash window: SIGKILL this process at that step of a folder swap
#: (``journal``, ``old-aside``, ``new-in-place``, ``carried``; see :func:`replace_dir`)
KILL_AT_ENV = "INFLUENCE_EXPLORER_TEST_KILL_AT"
#: a partial folder's owner record (pid and host of the process writing it)
OWNER_FILE = ".owner.json"


def atomic_write(path: str | Path, content: bytes | str | Callable[[IO[bytes]], Any]) -> Path:
    """Write ``content`` (bytes, text as UTF-8, or a function given the open binary file) to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp-{os.getpid()}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content.encode() if isinstance(content, str) else content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any, **dump_kwargs: Any) -> Path:
    """``json.dump(obj)`` to ``path`` atomically (``indent=2`` unless given)."""
    dump_kwargs.setdefault("indent", 2)
    return atomic_write(path, json.dumps(obj, **dump_kwargs))


def _crash_point(step: str) -> None:
    if os.environ.get(KILL_AT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (a folder swap is never cut by a handler)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, OSError, ValueError):  # no POSIX signal masks: nothing to defer
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _journal_path(final: Path) -> Path:
    return final.parent / f".{final.name}.swap.json"


def replace_dir(tmp: str | Path, final: str | Path, before_swap: Callable[[Path], None] | None = None,
                carry: Iterable[str] = ()) -> Path:
    """Move the finished folder ``tmp`` to ``final``, replacing any older ``final``; recoverable.

    A journal ``.<name>.swap.json`` beside ``final`` records the swap before anything moves: the
    old folder is renamed aside (``.<name>.old-<pid>-<n>``), ``tmp`` renamed to ``final``, each
    path of ``carry`` (relative, e.g. ``evaluation/groundtruth``) moved from the old folder into the
    new one if the new one lacks it, the old folder removed, the journal removed. A process killed
    at any step leaves the journal: :func:`recover_swap` (run by the next writer, or a reader) finishes
    the swap, so there is always one visible ``final`` and carried files are never lost. SIGINT and
    SIGTERM are deferred while it runs. ``before_swap(final)`` runs first, while the old folder is
    still in place.
    """
    tmp, final = Path(tmp), Path(final)
    journal = {"pid": os.getpid(), "host": socket.gethostname(), "final": final.name, "new": tmp.name,
               "old": f".{final.name}.old-{os.getpid()}-{time.time_ns()}", "carry": [str(c) for c in carry]}
    with signals_deferred():
        if final.exists() and before_swap is not None:
            before_swap(final)
        atomic_write_json(_journal_path(final), journal)
        _crash_point("journal")
        try:
            _finish_swap(final.parent, journal)
        except OSError:
            old = final.parent / journal["old"]
            if not final.exists() and old.is_dir():  # put the old folder back before reporting the error
                os.replace(old, final)
            _journal_path(final).unlink(missing_ok=True)
            raise
    return final


def _finish_swap(parent: Path, j: dict[str, Any]) -> None:
    """Do the remaining steps of the swap ``j`` (each is skipped if already done)."""
    final, new, old = parent / j["final"], parent / j["new"], parent / j["old"]
    if new.is_dir() and final.exists() and not old.exists():
        os.replace(final, old)
        _crash_point("old-aside")
    if new.is_dir() and not final.exists():
        os.replace(new, final)
        _crash_point("new-in-place")
    elif not final.exists() and old.is_dir():  # the new folder is gone: roll back to the old one
        os.replace(old, final)
    if old.is_dir() and final.is_dir():
        for rel in j.get("carry", []):
            src, dst = old / rel, final / rel
            if src.exists() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
        _crash_point("carried")
        shutil.rmtree(old)
    if final.is_dir():
        (final / OWNER_FILE).unlink(missing_ok=True)  # the partial's owner record: not part of the result
    _journal_path(final).unlink(missing_ok=True)


def pid_alive(pid: object, host: object) -> bool:
    """Whether process ``pid`` on ``host`` may still be running (unknown host or pid: assumed alive)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or host != socket.gethostname():
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: exists, owned by someone else
        return True
    return True


def _valid_journal(j: object, name: str) -> bool:
    """A journal written by :func:`replace_dir` for the folder ``name`` (its names are checked, so a
    hand-made journal cannot move anything else)."""
    if not isinstance(j, dict) or j.get("final") != name:
        return False
    new, old, carry = j.get("new"), j.get("old"), j.get("carry", [])
    return (isinstance(new, str) and isinstance(old, str) and new.startswith(f".{name}.") and "/" not in new
            and old.startswith(f".{name}.old-") and "/" not in old and "\\" not in new + old
            and isinstance(carry, list) and all(isinstance(c, str) and c and not Path(c).is_absolute()
                                                and ".." not in Path(c).parts for c in carry))


def recover_swap(final: str | Path) -> str | None:
    """Finish a swap into ``final`` that a dead process left half done (see :func:`replace_dir`).

    Returns ``"finished"``, or None when there was nothing to do (no journal, an invalid one, or its
    process is alive). Safe for readers: only ever completes the journal's own steps.
    """
    final = Path(final)
    jp = _journal_path(final)
    try:
        j = json.loads(jp.read_text())
    except (OSError, ValueError):
        return None
    if not _valid_journal(j, final.name) or pid_alive(j.get("pid"), j.get("host")):
        return None
    with signals_deferred():
        _finish_swap(final.parent, j)
    return "finished"


def recover_swaps(folder: str | Path) -> list[str]:
    """:func:`recover_swap` for every run folder of ``folder`` with a journal; the names finished."""
    done = []
    for jp in sorted(Path(folder).glob(".*.swap.json")):
        name = jp.name[1:-len(".swap.json")]
        if name and recover_swap(Path(folder) / name):
            done.append(name)
    return done


def write_owner(folder: str | Path) -> None:
    """Record in ``folder`` that this process writes it (for :func:`remove_dead_partials`)."""
    atomic_write_json(Path(folder) / OWNER_FILE, {"pid": os.getpid(), "host": socket.gethostname()})


def remove_dead_partials(parent: str | Path, name: str) -> list[Path]:
    """Remove ``.<name>.partial-*`` folders in ``parent`` whose owner record names a dead process on
    this host (never one without a record, or of a live process, or one a pending swap still needs)."""
    removed = []
    parent = Path(parent)
    pending = set()
    try:
        pending = {json.loads(_journal_path(parent / name).read_text()).get("new")}
    except (OSError, ValueError, AttributeError):
        pass
    for d in parent.glob(f".{name}.partial-*"):
        if d.name in pending or d.is_symlink() or not d.is_dir():
            continue
        try:
            owner = json.loads((d / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(owner, dict) and not pid_alive(owner.get("pid"), owner.get("host")):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
