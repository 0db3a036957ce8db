"""The 2-D map of the samples: UMAP on an exact kNN graph, with numba's compiled code cached on disk.

A run's fixed cost used to be UMAP itself (17-27 s on the digits): numba compiled umap's kernels in
every process, and umap's exact kNN for small sets called a Python distance per pair (1.6 M calls for
1,797 points). Here the kNN graph comes from scikit-learn (vectorised, the same exact neighbours) and
umap's jitted functions are cached under the user's cache folder (``numba_cache_dir()``), so only the
first run on a machine compiles. Precompute only: the UI never imports umap.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

#: environment variable naming the folder for compiled numba code (numba's own); default below
NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"
#: above this many points the kNN graph is left to umap's approximate NN-descent
EXACT_KNN_MAX = 20_000
#: SGD epochs of the layout: None = umap's default (500 below 10,000 points, 200 above). 200 on the
#: digits keeps trustworthiness (0.972) but moves the map's 15-NN sets further from the 500-epoch map
#: (overlap 0.67) than umap's own seed-to-seed variation (0.74), so the default stays
LAYOUT_EPOCHS: int | None = None


def numba_cache_dir() -> Path:
    """``$NUMBA_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/influence-explorer/numba`` (``~/.cache/...``)."""
    if os.environ.get(NUMBA_CACHE_ENV):
        return Path(os.environ[NUMBA_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "influence-explorer" / "numba"


def _enable_numba_cache() -> None:
    """Point numba at :func:`numba_cache_dir` and turn on on-disk caching for umap's and pynndescent's
    jitted functions (those numba cannot cache, e.g. with function arguments, stay uncached)."""
    folder = numba_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # read-only home: compile in memory as before
    os.environ.setdefault(NUMBA_CACHE_ENV, str(folder))
    import numba
    from numba.core.registry import CPUDispatcher

    numba.config.CACHE_DIR = str(folder)
    if "umap" not in sys.modules:
        with warnings.catch_warnings(), _cache_by_default(numba):
            warnings.simplefilter("ignore")
            import umap  # noqa: F401  (imports its submodules; most are jitted at first call)

    for name, mod in list(sys.modules.items()):
        if name.split(".")[0] not in ("umap", "pynndescent") or mod is None:
            continue
        for fn in list(vars(mod).values()):
            if isinstance(fn, CPUDispatcher):
                try:
                    fn.enable_caching()
                except Exception:  # noqa: BLE001 - an uncachable function compiles in memory as before
                    pass


@contextmanager
def _cache_by_default(numba: Any) -> Iterator[None]:
    """While umap and pynndescent are imported, ``numba.njit``/``numba.jit`` default to ``cache=True``:
    the functions with an explicit signature (umap.utils' ``tau_rand_int``, ``tau_rand``) compile eagerly
    at import, before :func:`_enable_numba_cache` could switch their caching on (a small saving: ~0.1
    CPU-s per process on the digits, measured A/B in fresh processes)."""
    originals = {name: getattr(numba, name) for name in ("njit", "jit")}

    def caching(decorator: Any) -> Any:
        @functools.wraps(decorator)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("cache", True)
            return decorator(*args, **kwargs)
        return wrapper

    try:
        for name, fn in originals.items():
            setattr(numba, name, caching(fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(numba, name, fn)


def exact_knn(f: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices [n, k] int64, distances [n, k] float32)`` of each row's k nearest rows (itself first)."""
    from sklearn.neighbors import NearestNeighbors

    dist, idx = NearestNeighbors(n_neighbors=k).fit(f).kneighbors(f)
    return idx.astype(np.int64), dist.astype(np.float32)


def umap_embedding(features: np.ndarray, n_neighbors: int, min_dist: float, seed: int) -> np.ndarray:
    """2-D UMAP of standardised ``features [n, d]`` -> ``[n, 2]`` float32. Leaves torch's intra-op thread
    count as it found it (the OpenMP runtimes that numba/scikit-learn load can reset it, which changed the
    bits of a later training in the same process); a process without torch (the background worker,
    :mod:`precompute.embedding_worker`) does not import it."""
    if "torch" not in sys.modules:
        return _umap_embedding(features, n_neighbors, min_dist, seed)
    import torch

    threads = torch.get_num_threads()
    try:
        return _umap_embedding(features, n_neighbors, min_dist, seed)
    finally:
        torch.set_num_threads(threads)


def _umap_embedding(features: np.ndarray, n_neighbors: int, min_dist: float, seed: int) -> np.ndarray:
    _enable_numba_cache()
    import umap

    f = (features - features.mean(0)) / (features.std(0) + 1e-8)
    k = min(n_neighbors, len(f) - 1)
    extra = {}
    if len(f) <= EXACT_KNN_MAX:
        idx, dist = exact_knn(f, k)
        extra["precomputed_knn"] = (idx, dist, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_neighbors=k, min_dist=min_dist, random_state=seed, n_components=2,
                            n_epochs=LAYOUT_EPOCHS, **extra)
        return reducer.fit_transform(f).astype(np.float32)
