"""Lazy, indexable model inputs: the stand-in for whole ``x_train`` / ``x_test`` tensors.

A :class:`SampleSource` holds rows of float32 model inputs ``[n, *sample_shape]`` somewhere (a
memory-mapped ``.npy``, files on disk, a user's ``torch.utils.data.Dataset``) and reads any rows on
request. A :class:`SampleArray` wraps a source for torch code: ``x[s:e]``, ``x[idx]``, ``x[mask]``,
``x[i]`` return tensors of just those rows on ``x.device`` in ``x.dtype``, and ``len(x)``,
``x.shape``, ``x.to(device)`` behave like a tensor's, so the training loop, the influence estimators
(which slice ``task.x_train`` in batches) and the HVPs work unchanged. Memory holds one batch.
"""

from __future__ import annotations

import multiprocessing as mp
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

#: bytes of float32 rows one chunked pass (fingerprint, validation, thumbnails) reads at a time
CHUNK_BYTES = 4 << 20


class SampleSource(ABC):
    """Rows of float32 model inputs ``[n, *sample_shape]``, read by index (shape and dtype like an array)."""

    sample_shape: tuple[int, ...]
    dtype = np.dtype(np.float32)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, idx: np.ndarray) -> torch.Tensor:
        """Rows ``idx`` (int64 ``[b]``, any order, repeats allowed) as a float32 CPU tensor ``[b, *sample_shape]``."""

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    def read_range(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` ``[stop - start, *sample_shape]`` float32."""
        return self.read(np.arange(start, stop, dtype=np.int64))

    def read_raw(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float64 numpy in the source's own precision (validation, thumbnails)."""
        return self.read_range(start, stop).numpy().astype(np.float64)

    def iter_batches(self, batches: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        """``read(b)`` for each index batch, in order (a DataLoader source prefetches them)."""
        for b in batches:
            yield self.read(np.asarray(b, np.int64))

    def chunk_rows(self) -> int:
        """Rows per chunk of a sequential pass (about :data:`CHUNK_BYTES` of float32)."""
        return max(1, CHUNK_BYTES // max(4 * int(np.prod(self.sample_shape, dtype=np.int64)), 1))

    def chunks(self) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of consecutive chunks covering all rows."""
        step = self.chunk_rows()
        for s in range(0, len(self), step):
            yield s, min(s + step, len(self))


class ArraySource(SampleSource):
    """Rows of a numpy array, in memory or a ``.npy`` (or uncompressed ``.npz`` member) on disk.

    File-backed arrays are memory-mapped for each read and unmapped after it, so the pages read do
    not stay in this process's resident memory (the kernel's page cache keeps them). ``add_channel``
    reads stored ``[n, H, W]`` images as ``[n, 1, H, W]``.
    """

    def __init__(self, array: np.ndarray | None = None, *, path: str | None = None, offset: int = 0,
                 dtype: Any = None, shape: tuple[int, ...] | None = None, fortran_order: bool = False,
                 add_channel: bool = False):
        if array is None and path is None:
            raise TypeError("ArraySource needs an array or a path")
        self.array, self.path, self.offset = array, path, int(offset)
        self.raw_dtype = np.dtype(dtype if array is None else array.dtype)
        self.raw_shape = tuple(int(v) for v in (array.shape if array is not None else shape))
        self.fortran_order, self.add_channel = fortran_order, add_channel
        rest = self.raw_shape[1:]
        self.sample_shape = (1, *rest) if add_channel else rest

    @classmethod
    def from_npy(cls, path: str, add_channel: bool = False) -> ArraySource:
        """Memory-map ``path`` (``np.load(mmap_mode="r")``) and keep where its data lies."""
        mm = np.load(path, mmap_mode="r", allow_pickle=False)
        src = cls(path=str(path), offset=mm.offset, dtype=mm.dtype, shape=mm.shape,
                  fortran_order=bool(mm.flags.f_contiguous and not mm.flags.c_contiguous), add_channel=add_channel)
        del mm
        return src

    def __len__(self) -> int:
        return self.raw_shape[0]

    def _mapped(self) -> np.ndarray:
        if self.array is not None:
            return self.array
        if self.raw_shape[0] == 0 or 0 in self.raw_shape:
            return np.zeros(self.raw_shape, self.raw_dtype)
        return np.memmap(self.path, dtype=self.raw_dtype, mode="r", offset=self.offset, shape=self.raw_shape,
                         order="F" if self.fortran_order else "C")

    def _rows(self, key: np.ndarray | slice, dtype: Any) -> np.ndarray:
        a = self._mapped()
        out = np.array(a[key], dtype=dtype, order="C")  # a copy: the mapping closes when ``a`` goes
        del a
        return out[:, None] if self.add_channel else out

    def read(self, idx: np.ndarray) -> torch.Tensor:
        idx = np.asarray(idx, np.int64)
        if len(idx) and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
            return self.read_range(int(idx[0]), int(idx[0]) + len(idx))
        return torch.from_numpy(self._rows(idx, np.float32))

    def read_range(self, start: int, stop: int) -> torch.Tensor:
        return torch.from_numpy(self._rows(slice(start, stop), np.float32))

    def read_raw(self, start: int, stop: int) -> np.ndarray:
        return self._rows(slice(start, stop), np.float64)


class SubsetSource(SampleSource):
    """Rows ``index`` of another source (k-fold training folds) without copying them."""

    def __init__(self, base: SampleSource, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, np.int64)
        self.sample_shape = base.sample_shape

    def __len__(self) -> int:
        return len(self.index)

    def read(self, idx: np.ndarray) -> torch.Tensor:
        return self.base.read(self.index[np.asarray(idx, np.int64)])

    def iter_batches(self, batches: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        return self.base.iter_batches(self.index[np.asarray(b, np.int64)] for b in batches)


class _Inputs(torch.utils.data.Dataset):
    """Item ``i`` of a dataset as a float32 tensor: ``item[0]`` for ``(x, y)`` pairs, else the item."""

    def __init__(self, dataset: Any, pairs: bool):
        self.dataset, self.pairs = dataset, pairs

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.dataset[int(i)]
        return torch.as_tensor(item[0] if self.pairs else item).to(torch.float32)


class _Batches:
    """A batch sampler whose batches are replaced before each pass (one persistent DataLoader)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _stack(items: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(items)


def _mp_context() -> Any:
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None


class DatasetSource(SampleSource):
    """Inputs from a map-style ``torch.utils.data.Dataset`` (``__len__``, ``__getitem__``), read
    through a ``DataLoader`` with ``workers`` processes (0: in this process).

    ``pairs``: items are ``(x, y)`` (a user's dataset), else the item is ``x`` (image files).
    ``iter_batches`` streams batches with prefetching; ``read`` of one batch splits it over the workers.
    """

    def __init__(self, dataset: Any, sample_shape: Sequence[int], workers: int = 0, pairs: bool = True):
        self.dataset = dataset
        self.inputs = _Inputs(dataset, pairs)
        self.sample_shape = tuple(int(v) for v in sample_shape)
        self.workers = int(workers)
        self._loader: torch.utils.data.DataLoader | None = None
        self._sampler = _Batches()
        self._busy = False

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loader": None, "_busy": False}

    def _pool(self) -> torch.utils.data.DataLoader:
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self.inputs, batch_sampler=self._sampler, num_workers=self.workers, collate_fn=_stack,
                persistent_workers=True, multiprocessing_context=_mp_context())
        return self._loader

    def _local(self, idx: np.ndarray) -> torch.Tensor:
        if len(idx) == 0:
            return torch.zeros((0, *self.sample_shape), dtype=torch.float32)
        return torch.stack([self.inputs[int(i)] for i in idx])

    def read(self, idx: np.ndarray) -> torch.Tensor:
        idx = np.asarray(idx, np.int64)
        if self.workers == 0 or len(idx) < 2 or self._busy:
            return self._local(idx)
        self._sampler.batches = [p.tolist() for p in np.array_split(idx, min(self.workers, len(idx)))]
        return torch.cat(list(self._pool()))

    def iter_batches(self, batches: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        lists = [np.asarray(b, np.int64).tolist() for b in batches]
        if self.workers == 0 or self._busy:
            for b in lists:
                yield self._local(np.asarray(b, np.int64))
            return
        self._sampler.batches = lists
        self._busy = True
        try:
            yield from self._pool()
        finally:
            self._busy = False


def _index_rows(key: Any, n: int) -> np.ndarray | slice | int:
    """A row key -> an int, a slice, or int64 row indices (booleans masks and negatives resolved)."""
    if isinstance(key, torch.Tensor):
        key = key.item() if key.dim() == 0 and not key.is_floating_point() else key.detach().cpu().numpy()
    if isinstance(key, int | np.integer) and not isinstance(key, bool | np.bool_):
        i = int(key)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of bounds for {n} samples")
        return i % n
    if isinstance(key, slice):
        return key
    if isinstance(key, tuple) or key is Ellipsis or key is None:
        raise TypeError("SampleArray indexes rows only (x[i], x[s:e], x[idx], x[mask]); index the returned tensor "
                        "for more")
    arr = np.asarray(key)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise IndexError(f"boolean mask of shape {arr.shape} does not match {n} samples")
        return np.flatnonzero(arr)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 1:
        raise IndexError(f"row indices must be a 1-D integer array or a boolean mask (got {arr.dtype} {arr.shape})")
    arr = arr.astype(np.int64)
    if arr.min() < -n or arr.max() >= n:
        raise IndexError(f"row index out of bounds for {n} samples")
    return np.where(arr < 0, arr + n, arr)


class SampleArray:
    """Tensor-like rows of a :class:`SampleSource` on ``device`` in ``dtype`` (default float32, CPU)."""

    def __init__(self, source: SampleSource, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        self.source, self.dtype, self.device = source, dtype, torch.device(device)

    def __len__(self) -> int:
        return len(self.source)

    def __repr__(self) -> str:
        return f"SampleArray({type(self.source).__name__}, shape={tuple(self.shape)}, dtype={self.dtype}, " \
               f"device={self.device})"

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.source.shape)

    @property
    def ndim(self) -> int:
        return self.source.ndim

    def dim(self) -> int:
        return self.ndim

    def size(self, d: int | None = None) -> torch.Size | int:
        return self.shape if d is None else self.shape[d]

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device=self.device, dtype=self.dtype)

    def __getitem__(self, key: Any) -> torch.Tensor:
        """``x[i]`` ``[*sample_shape]``; ``x[s:e]``, ``x[idx]``, ``x[mask]`` ``[b, *sample_shape]``."""
        n = len(self)
        rows = _index_rows(key, n)
        if isinstance(rows, int):
            return self._out(self.source.read(np.array([rows], np.int64))[0])
        if isinstance(rows, slice):
            start, stop, step = rows.indices(n)
            if step == 1:
                return self._out(self.source.read_range(start, max(start, stop)))
            rows = np.arange(start, stop, step, dtype=np.int64)
        return self._out(self.source.read(rows))

    def to(self, *args: Any, **kwargs: Any) -> SampleArray:
        """Like ``Tensor.to``: a device and/or a dtype (positional or keyword); returns a view of the same source."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        for a in args:
            if isinstance(a, torch.dtype):
                dtype = a
            elif isinstance(a, torch.Tensor | SampleArray):
                device, dtype = a.device, a.dtype
            elif a is not None:
                device = a
        out = SampleArray(self.source, dtype or self.dtype, device if device is not None else self.device)
        return self if (out.dtype, out.device) == (self.dtype, self.device) else out

    def cpu(self) -> SampleArray:
        return self.to("cpu")

    def double(self) -> SampleArray:
        return self.to(torch.float64)

    def float(self) -> SampleArray:
        return self.to(torch.float32)

    def subset(self, index: Any) -> SampleArray:
        """Rows ``index`` as another lazy SampleArray (nothing read now)."""
        rows = _index_rows(index, len(self))
        rows = np.arange(len(self))[rows] if not isinstance(rows, np.ndarray) else rows
        return SampleArray(SubsetSource(self.source, np.atleast_1d(rows)), self.dtype, self.device)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Consecutive batches ``x[s:s + batch_size]``, prefetched where the source can."""
        n = len(self)
        return self.iter_index_batches(np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size))

    def iter_index_batches(self, batches: Iterable[Any]) -> Iterator[torch.Tensor]:
        """``x[b]`` for each index batch ``b`` (numpy or tensor), in order."""
        idx = [np.asarray(_index_rows(b, len(self)), np.int64) for b in batches]
        for t in self.source.iter_batches(idx):
            yield self._out(t)

    def materialize(self) -> torch.Tensor:
        """Every row as one tensor ``[n, *sample_shape]`` (memory grows with n: small data only)."""
        return self[:]


Rows = torch.Tensor | SampleArray


def as_model_input(x: Any, dtype: torch.dtype, device: torch.device | str) -> Rows:
    """Model inputs for the pipeline: an in-memory ndarray or tensor -> a tensor (as before); a
    :class:`SampleSource` or a memory-mapped array -> a lazy :class:`SampleArray`."""
    if isinstance(x, SampleArray):
        return x.to(device=device, dtype=dtype)
    if isinstance(x, SampleSource):
        return SampleArray(x, dtype, device)
    if isinstance(x, np.memmap):
        return SampleArray(ArraySource(x), dtype, device)
    return torch.as_tensor(x, dtype=dtype, device=device)


def materialize(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Every row as one CPU tensor (for code that needs all of it, e.g. retraining in ``evaluate``)."""
    if isinstance(x, SampleSource):
        x = SampleArray(x)
    if isinstance(x, SampleArray):
        return x.to("cpu", dtype or x.dtype).materialize()
    return torch.as_tensor(x, dtype=dtype)


def subset_rows(x: Rows, index: Any) -> Rows:
    """``x[index]``, lazily for a :class:`SampleArray` (a fold of the training set)."""
    return x.subset(index) if isinstance(x, SampleArray) else x[index]


def iter_rows(x: Rows, batches: Sequence[Any]) -> Iterator[torch.Tensor]:
    """``x[b]`` for each index batch (a tensor's own device), prefetched for a :class:`SampleArray`."""
    if isinstance(x, SampleArray):
        yield from x.iter_index_batches(batches)
        return
    for b in batches:
        yield x[b.to(x.device) if isinstance(b, torch.Tensor) else b]


def iter_slices(x: Rows, batch_size: int) -> Iterator[torch.Tensor]:
    """``x[s:s + batch_size]`` for consecutive ``s``."""
    if isinstance(x, SampleArray):
        yield from x.batches(batch_size)
        return
    for s in range(0, len(x), batch_size):
        yield x[s:s + batch_size]
