"""Optional server-side timing of each page run (for bench/bench_explorer.py).

Set ``INFLUENCE_EXPLORER_TIMING=/path/to/log.jsonl`` and every rerun appends
``{"page": ..., "ms": ..., "script_ms": ..., "params": {...}}`` (``ms``: the page's own code;
``script_ms``: the whole script run, from ``started``); unset, this costs nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

TIMING_ENV = "INFLUENCE_EXPLORER_TIMING"


@contextmanager
def timed(page: str, params: dict[str, str], started: float | None = None) -> Iterator[None]:
    """Time the block and log it when ``$INFLUENCE_EXPLORER_TIMING`` names a file (``started``: the
    ``time.perf_counter()`` of the script run's start, for ``script_ms``)."""
    path = os.environ.get(TIMING_ENV)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if path:
            now = time.perf_counter()
            row = {"page": page, "ms": round(1000.0 * (now - t0), 2), "params": params, "t": time.time()}
            if started is not None:
                row["script_ms"] = round(1000.0 * (now - started), 2)
            with open(path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
