"""Optional server-side timing of each page run (for bench/bench_explorer.py).

Set ``INFLUENCE_EXPLORER_TIMING=/path/to/log.jsonl`` and every rerun appends
``{"page": ..., "ms": ..., "params": {...}}``; unset, this costs nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

TIMING_ENV = "INFLUENCE_EXPLORER_TIMING"


@contextmanager
def timed(page: str, params: dict[str, str]) -> Iterator[None]:
    """Time the block and log it when ``$INFLUENCE_EXPLORER_TIMING`` names a file."""
    path = os.environ.get(TIMING_ENV)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if path:
            ms = 1000.0 * (time.perf_counter() - t0)
            with open(path, "a") as fh:
                fh.write(json.dumps({"page": page, "ms": round(ms, 2), "params": params, "t": time.time()}) + "\n")
