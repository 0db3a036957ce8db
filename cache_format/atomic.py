"""Crash-safe writes: a file or folder appears whole under its final name, or not at all.

Every writer of the cache (precompute's run writer, evaluate's results and ground truth, the
annotation exports) goes through these: write to a hidden temporary name in the same folder,
flush and fsync, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


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


def replace_dir(tmp: str | Path, final: str | Path, before_swap: Callable[[Path], None] | None = None) -> Path:
    """Move the finished folder ``tmp`` to ``final``, replacing any older ``final``.

    The old folder is first renamed aside (``.<name>.old-<pid>``) and removed only after the new one is
    in place. ``before_swap(old_final)`` runs just before, while the old folder is still there (e.g. to
    carry files over into ``tmp``).
    """
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        if before_swap is not None:
            before_swap(final)
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final
