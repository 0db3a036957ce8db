"""A chunked, resumable on-disk matrix of train-side factors ``[n, k]`` (compressed gradients).

Layout of one store (a folder)::

    store.json                  n, k, dtype, chunk_rows, the fingerprint of what made it; written first
    chunk_00000.npy             rows 0:chunk_rows of the matrix, [rows, k] (float16 or float32)
    chunk_00000.done.json       completion record: rows, bytes, sha256 of the .npy; written last

A chunk counts only once its completion record exists and matches the file, so a run killed at any
point (kill -9 included) resumes by computing just the chunks without one. Every file is written under
a temporary name and renamed into place (:mod:`cache_format.atomic`). A store made by another model,
compressor or method (``fingerprint``) or with another shape is refused, never mixed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cache_format.atomic import atomic_write, atomic_write_json
from precompute.errors import CacheError

STORE_META = "store.json"
STORE_VERSION = 1
DTYPES = ("float16", "float32", "float64")


@dataclass(frozen=True)
class StoreSpec:
    """What a store holds: ``n`` rows of width ``k`` in ``dtype``, cut into ``chunk_rows``-row chunks;
    ``fingerprint`` identifies what computed it (model, compressor, method, checkpoint)."""

    n: int
    k: int
    dtype: str
    chunk_rows: int
    fingerprint: str

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise CacheError(f"store dtype must be one of {list(DTYPES)} (got {self.dtype!r})")
        if self.n < 0 or self.k < 1 or self.chunk_rows < 1:
            raise CacheError(f"store shape must have n >= 0, k >= 1, chunk_rows >= 1 (got {self})")

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk_rows)


#: a big store is cut into at least this many chunks (so that a torchrun launch deals them out evenly
#: and a resume recomputes little), but a chunk keeps at least MIN_CHUNK_ROWS rows
MIN_CHUNKS, MIN_CHUNK_ROWS = 32, 1024


def chunk_rows_for(k: int, dtype: str, budget_bytes: int, n: int) -> int:
    """Rows per chunk so that one chunk (plus its float64 scoring copy) stays within ``budget_bytes``, and
    a big store has at least :data:`MIN_CHUNKS` chunks. It never depends on the number of processes, so
    a run resumed with another world size finds the same chunks."""
    per_row = k * (np.dtype(dtype).itemsize + 8)
    spread = max(MIN_CHUNK_ROWS, -(-n // MIN_CHUNKS))
    return int(max(1, min(n if n > 0 else 1, budget_bytes // max(per_row, 1), spread)))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class GradientStore:
    """Open (or create) the store in ``root`` for ``spec``; refuses a folder made for another spec."""

    def __init__(self, root: str | Path, spec: StoreSpec):
        self.root, self.spec = Path(root), spec
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self.root / STORE_META
        want = {"version": STORE_VERSION, **asdict(spec)}
        if meta.is_file():
            try:
                have = json.loads(meta.read_text())
            except (OSError, ValueError):
                have = None
            if have != want:
                raise CacheError(f"{self.root}: a gradient store made for another configuration "
                                 f"({have} vs {want}); remove the folder or rebuild with --overwrite")
        else:
            atomic_write_json(meta, want)

    # ------------------------------------------------------------------ chunks
    def rows(self, i: int) -> tuple[int, int]:
        """``(start, stop)`` rows of chunk ``i``."""
        s = i * self.spec.chunk_rows
        return s, min(s + self.spec.chunk_rows, self.spec.n)

    def _paths(self, i: int) -> tuple[Path, Path]:
        return self.root / f"chunk_{i:05d}.npy", self.root / f"chunk_{i:05d}.done.json"

    def is_done(self, i: int, verify: bool = False) -> bool:
        """Whether chunk ``i`` is complete: its record exists and matches the file (size; sha256 too
        with ``verify``)."""
        data, record = self._paths(i)
        try:
            rec = json.loads(record.read_text())
        except (OSError, ValueError):
            return False
        start, stop = self.rows(i)
        if not data.is_file() or rec.get("rows") != [start, stop] or rec.get("bytes") != data.stat().st_size:
            return False
        return not verify or rec.get("sha256") == _sha256(data)

    def missing(self, verify: bool = False) -> list[int]:
        """Chunks still to compute."""
        return [i for i in range(self.spec.n_chunks) if not self.is_done(i, verify)]

    @property
    def complete(self) -> bool:
        return not self.missing()

    def write_chunk(self, i: int, block: np.ndarray) -> None:
        """Store rows of chunk ``i`` (``block [rows, k]``), then its completion record."""
        start, stop = self.rows(i)
        block = np.ascontiguousarray(block, dtype=self.spec.dtype)
        if block.shape != (stop - start, self.spec.k):
            raise ValueError(f"chunk {i}: expected shape {(stop - start, self.spec.k)}, got {block.shape}")
        if not np.isfinite(block).all():
            raise FloatingPointError(f"{self.root.name}: non-finite values in rows {start}:{stop} "
                                     f"(overflow in {self.spec.dtype}? use store dtype float32)")
        data, record = self._paths(i)
        record.unlink(missing_ok=True)
        atomic_write(data, lambda fh: np.save(fh, block, allow_pickle=False))
        atomic_write_json(record, {"rows": [start, stop], "bytes": data.stat().st_size, "sha256": _sha256(data)})

    def fill(self, compute: Callable[[int, int], np.ndarray], on_chunk: Callable[[int, int], Any] | None = None,
             share: Callable[[list[int]], list[int]] | None = None) -> list[int]:
        """Compute every missing chunk with ``compute(start, stop) -> [stop - start, k]``; returns the
        chunk ids computed (an interrupted fill resumes with the rest). ``share`` picks this process's
        part of the missing chunks (a torchrun launch: ``DistContext.mine``); the others are left to
        the other processes, which write into the same folder."""
        todo = self.missing()
        if share is not None:
            todo = share(todo)
        for i in todo:
            start, stop = self.rows(i)
            self.write_chunk(i, compute(start, stop))
            if on_chunk is not None:
                on_chunk(i, stop - start)
        return todo

    def chunk(self, i: int) -> np.ndarray:
        """Chunk ``i`` as a read-only memmap ``[rows, k]``."""
        if not self.is_done(i):
            raise CacheError(f"{self.root}: chunk {i} is not complete; rerun the same command to resume")
        return np.load(self._paths(i)[0], mmap_mode="r", allow_pickle=False)

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(start_row, chunk [rows, k])`` for every chunk, in order."""
        for i in range(self.spec.n_chunks):
            yield self.rows(i)[0], self.chunk(i)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` ``[stop - start, k]``: a view of one chunk, or a copy gathered across chunks."""
        r = self.spec.chunk_rows
        first, last = start // r, max(stop - 1, start) // r
        parts = [self.chunk(i)[max(start - i * r, 0):stop - i * r] for i in range(first, last + 1)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read(self) -> np.ndarray:
        """The whole matrix ``[n, k]`` in memory (small stores, tests)."""
        if self.spec.n == 0:
            return np.zeros((0, self.spec.k), self.spec.dtype)
        return np.concatenate([np.asarray(c) for _, c in self.iter_chunks()])

    @property
    def nbytes(self) -> int:
        return self.spec.n * self.spec.k * np.dtype(self.spec.dtype).itemsize
