"""The 2-D map computed in a helper process that starts with the run, so that importing umap and
loading its compiled kernels (1-2 s on the digits) happens while the model trains, and the layout
itself while influence and mislabels run, on the other core.

The parent (:class:`BackgroundEmbedding`) starts ``python -m precompute.embedding_worker``; the worker
imports umap, warms its kernels on a tiny layout, then waits for one request line on stdin naming the
features file (``.npy`` ``[n, d]``) and where to write the result (``[n, 2]`` float32, renamed into
place), and answers one JSON line on stdout. The result is :func:`precompute.embedding.umap_embedding`
of the same features, bit for bit (the same code and seed; tested). Any failure (the worker cannot
start, crashes, or answers an error) falls back to computing the map in the parent, with a log line.
The worker exits when its parent dies (EOF on stdin, or a parent-pid watch while it computes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: points of the warm-up layout that loads every cached kernel before the real request arrives
WARMUP_POINTS = 64


class BackgroundEmbedding:
    """One map computed by a helper process: ``submit(...)``, then ``result()``; ``close()`` always."""

    def __init__(self, log: Callable[[str], None] = print):
        """Start the worker now (its imports run while the caller goes on)."""
        self.log = log
        self.folder: Path | None = None
        self.params: dict[str, float | int] = {}
        self.features: np.ndarray | None = None
        self.proc: subprocess.Popen | None = None
        self.error: str | None = None
        self._stderr = None
        try:
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
            self.proc = subprocess.Popen([sys.executable, "-m", "precompute.embedding_worker"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        except OSError as exc:
            self.error = f"could not start the embedding worker ({exc})"

    def submit(self, features: np.ndarray, folder: Path, n_neighbors: int, min_dist: float, seed: int) -> None:
        """Hand ``features [n, d]`` to the worker through ``folder`` (created; removed by ``close()``)."""
        self.features, self.folder = features, Path(folder)
        self.params = {"n_neighbors": n_neighbors, "min_dist": min_dist, "seed": seed}
        if self.proc is None or self.error is not None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / "features.npy"
            np.save(path, np.ascontiguousarray(features))
            request = {**self.params, "features": str(path), "out": str(self.folder / "embedding.npy")}
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.close()
        except OSError as exc:  # the worker died early (broken pipe) or the disk is full
            self.error = f"the embedding worker did not take the request ({exc})"

    def result(self) -> tuple[np.ndarray, dict[str, float | str]]:
        """``(embedding [n, 2] float32, info)``: the worker's map, or the parent's own when it failed."""
        assert self.features is not None, "submit() first"
        if self.proc is not None and self.error is None:
            t0 = time.perf_counter()
            line = self.proc.stdout.readline()
            self.proc.wait()
            try:
                answer = json.loads(line) if line else {"ok": False, "error": f"exit code {self.proc.returncode}"}
            except ValueError:
                answer = {"ok": False, "error": f"unreadable answer {line[:200]!r}"}
            if answer.get("ok"):
                emb = np.load(self.folder / "embedding.npy")
                return emb, {"mode": "background", "worker_seconds": answer.get("seconds", 0.0),
                             "waited_seconds": round(time.perf_counter() - t0, 3)}
            self.error = f"the embedding worker failed: {answer.get('error')}{self._log_tail()}"
        from precompute.embedding import umap_embedding

        self.log(f"[embedding] {self.error}; computing the map in this process")
        return (umap_embedding(self.features, **self.params),
                {"mode": "in-process", "fallback_reason": str(self.error)[:300]})

    def _log_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        tail = self._stderr.read()[-300:].decode(errors="replace").strip()
        return f" ({tail.splitlines()[-1]})" if tail else ""

    def close(self) -> None:
        """Stop the worker if it still runs and remove its files (safe to call twice)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None and not stream.closed:
                    stream.close()
        if self._stderr is not None and not self._stderr.closed:
            self._stderr.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _exit_with_parent() -> None:
    """Leave as soon as the parent is gone (its pid changes when it dies and we are re-parented)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _answer(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C in the terminal: the parent reports it
    _exit_with_parent()
    from precompute.embedding import umap_embedding

    rng = np.random.default_rng(0)
    try:
        umap_embedding(rng.standard_normal((WARMUP_POINTS, 8)).astype(np.float32), 5, 0.1, 0)
    except Exception:  # noqa: BLE001 - a failing warm-up is only a lost head start
        pass
    line = sys.stdin.readline()
    if not line:  # the parent went away or stopped before the features existed
        os._exit(0)
    t0 = time.perf_counter()
    try:
        req = json.loads(line)
        features = np.load(req["features"], allow_pickle=False)
        emb = umap_embedding(features, int(req["n_neighbors"]), float(req["min_dist"]), int(req["seed"]))
        out = Path(req["out"])
        tmp = out.with_name(out.name + ".tmp.npy")
        np.save(tmp, emb)
        os.replace(tmp, out)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which computes the map itself
        _answer({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
        os._exit(1)
    _answer({"ok": True, "seconds": round(time.perf_counter() - t0, 3)})
    os._exit(0)  # skip the interpreter's teardown of umap/numba (about a second)


if __name__ == "__main__":
    main()
