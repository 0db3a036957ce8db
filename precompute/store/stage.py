"""One influence method through the store: fit, train factors into a resumable chunked store,
streamed scoring into the cache (dense or top-k only), self-influence from the stored chunks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from precompute.cache import CacheWriter, ScoreWriter
from precompute.distributed.context import DistContext
from precompute.influence.base import InfluenceEstimator, InfluenceTask
from precompute.store.budget import peak_rss_mb
from precompute.store.gradient_store import StoreSpec, chunk_rows_for
from precompute.store.predicted_label import run_predicted_label
from precompute.store.scoring import score_against_store, self_influence_from_store, train_factor_fn
from precompute.store.workdir import WorkDir

#: test-only crash window: SIGKILL this process after that many store chunks were written (all methods)
KILL_AFTER_ENV = "INFLUENCE_EXPLORER_TEST_KILL_AFTER_CHUNKS"
#: test-only: with KILL_AFTER_ENV, kill only the process of this torchrun rank
KILL_RANK_ENV = "INFLUENCE_EXPLORER_TEST_KILL_RANK"
_chunks_written = 0
#: ``store_scores = "auto"`` keeps the dense matrix only up to this many bytes (else top-k only)
DENSE_SCORES_MAX_BYTES = 2 << 30
STORE_SCORES = ("auto", "dense", "topk")


def _after_chunk() -> None:
    global _chunks_written
    _chunks_written += 1
    limit = os.environ.get(KILL_AFTER_ENV)
    rank = os.environ.get(KILL_RANK_ENV)
    if limit and _chunks_written >= int(limit) and (not rank or rank == os.environ.get("RANK", "0")):
        os.kill(os.getpid(), signal.SIGKILL)


def dense_scores(mode: str, n_test: int, n_train: int, budget: int) -> bool:
    """Whether to keep the full ``[n_test, n_train]`` float32 matrix on disk."""
    if mode == "dense":
        return True
    if mode == "topk":
        return False
    return n_test * n_train * 4 <= min(DENSE_SCORES_MAX_BYTES, 4 * budget)


def store_fingerprint(name: str, est: InfluenceEstimator, task: InfluenceTask, model_fp: str, dataset_fp: str) -> str:
    comp = task.compressor.fingerprint() if task.compressor is not None and est.capabilities.compressed_store else None
    blob = {"method": name, "config": est.config.to_dict(), "model": model_fp, "dataset": dataset_fp,
            "params": task.space.names, "compressor": comp, "damping": repr(task.damping),
            "checkpoints": len(task.checkpoints), "weight_decay": task.weight_decay}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_method(name: str, est: InfluenceEstimator, task: InfluenceTask, x_test: torch.Tensor, y_test: torch.Tensor,
               writer: CacheWriter | None, work: WorkDir, *, topk: int, train_batch: int, test_batch: int, budget: int,
               store_scores: str, store_dtype: str, chunk_rows: int | None, fingerprints: tuple[str, str],
               progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Run one method end to end into ``writer``; returns its manifest entry.

    In a torchrun launch (``task.dist``) every rank fits (statistics all-reduced where the fit sums over
    the training set), computes its share of the missing store chunks, scores its test blocks and
    self-influence blocks, and hands its folded state to rank 0 (``writer`` is None on the others),
    which merges the shards exactly and writes the method's arrays."""
    dist = task.dist
    n_test, n_train = len(x_test), task.n_train
    clock = time.perf_counter()
    bars: dict[str, tqdm] = {}

    def fit_progress(label: str, done: int, total: int) -> None:  # e.g. the exact Hessian's columns
        if label not in bars:
            bars[label] = tqdm(total=total, desc=f"{name}: {label}", disable=not progress or not dist.is_main,
                               leave=False)
        bars[label].update(done)

    task.progress = fit_progress
    try:
        est.fit(task)
    finally:
        task.progress = None
        for b in bars.values():
            b.close()
    timings = {"fit": time.perf_counter() - clock}
    probe = est.train_factors(task.x_train[:1], task.y_train[:1])
    width = int(probe.shape[1])
    dtype = str(probe.dtype).replace("torch.", "") if store_dtype == "auto" else store_dtype
    rows = chunk_rows or chunk_rows_for(width, dtype, max(budget // 8, 1 << 20), n_train)  # budget: per process
    rows = dist.broadcast(rows)  # one chunking for every rank (explicit budgets may differ between machines)
    spec = StoreSpec(n=n_train, k=width, dtype=dtype, chunk_rows=rows,
                     fingerprint=store_fingerprint(name, est, task, *fingerprints))
    store = work.store(name, spec) if dist.is_main else None
    dist.barrier()  # rank 0 made (or discarded) the folder: the others open it
    store = store or work.store(name, spec)
    already = spec.n_chunks - len(store.missing())
    dist.barrier()  # every rank counted before any writes
    bar = tqdm(total=n_train + n_test, desc=name, unit="sample", disable=not progress or not dist.is_main, leave=False)
    bar.update(min(n_train, already * rows))

    def on_chunk(_i: int, n_rows: int) -> None:
        bar.update(n_rows * dist.world)
        _after_chunk()

    clock = time.perf_counter()
    computed = store.fill(train_factor_fn(est, task, train_batch), on_chunk, share=dist.mine)
    timings["train_factors"] = time.perf_counter() - clock
    by_rank = dist.gather(computed)
    dist.barrier()  # the store is complete only once every rank wrote its chunks
    timings["store_wait"] = time.perf_counter() - clock - timings["train_factors"]
    if already:
        log(f"[{name}] resumed: {already} of {spec.n_chunks} store chunks were complete; computed chunks "
            f"{_ranges(sorted(i for ids in by_rank for i in ids))}" + (
                " (" + "; ".join(f"rank {r}: {_ranges(ids)}" for r, ids in enumerate(by_rank)) + ")"
                if dist.active else ""))
    dense = dense_scores(store_scores, n_test, n_train, budget)
    if dist.is_main:  # rank 0 creates the dense matrix in its partial run; the others write their rows into it
        sink = ScoreWriter(writer, name, n_test, n_train, topk, dense=dense)
        dist.broadcast(sink.dense_path)
    else:
        sink = ScoreWriter(None, name, n_test, n_train, topk, dense=dense, dense_path=dist.broadcast(None))
    clock = time.perf_counter()
    score_against_store(est, store, x_test, y_test, sink, test_batch, tick=lambda b: bar.update(b * dist.world),
                        dist=dist)
    timings["test_scores"] = time.perf_counter() - clock
    bar.close()
    clock = time.perf_counter()
    self_inf = self_influence_from_store(est, task, store, train_batch, dist=dist)
    timings["self_influence"] = time.perf_counter() - clock
    predicted = run_predicted_label(name, est, store, x_test, y_test, writer, topk=topk,  # rank 0 holds the writer
                                    test_block=test_batch) if dist.is_main else None
    if dist.active:
        clock = time.perf_counter()
        _merge_ranks(name, sink, self_inf, work, dist)
        timings["merge"] = time.perf_counter() - clock
    if dist.is_main:
        sink.close(self_inf)
    used_compression = task.compressor is not None and est.capabilities.compressed_store
    # a method without damping never resolves "auto" (a Hutchinson trace: 32 HVPs over the training set)
    damping = est.damping_for(task) if est.capabilities.damping is not None else None
    entry = {"config": est.config.to_dict(), "damping": damping, "summary": est.summary,
             "fit": est.fit_info(), "timings": {k: round(v, 3) for k, v in timings.items()},
             "topk": sink.k_row, "scores": "dense" if dense else "topk", "predicted_label": predicted,
             "store": {"width": width, "dtype": dtype, "chunk_rows": rows, "chunks": spec.n_chunks,
                       "chunks_computed": sum(len(ids) for ids in by_rank), "bytes": store.nbytes},
             "compression": task.compressor.summary() if used_compression and hasattr(task.compressor, "summary")
             else ("on" if used_compression else None)}
    if dist.active:
        ranks = dist.gather({"timings": entry["timings"], "chunks_computed": len(computed),
                             "peak_rss_mb": round(peak_rss_mb(), 1)})
        entry["ranks"] = ranks
    return entry


def _merge_ranks(name: str, sink: ScoreWriter, self_inf: np.ndarray, work: WorkDir, dist: DistContext) -> None:
    """Every rank but 0 writes its folded scores to the work folder; rank 0 merges them one at a time
    (memory: two ranks' top-k state, never ``n_test x n_train``)."""
    folder = work.root / "merge" / name
    if dist.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    if not dist.is_main:
        sink.save_shard(folder / f"rank_{dist.rank:05d}.npz", self_inf)
    dist.barrier()
    if dist.is_main:
        for r in range(1, dist.world):
            sink.absorb_shard(folder / f"rank_{r:05d}.npz", self_inf)
        shutil.rmtree(folder, ignore_errors=True)


def _ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    if not ids:
        return "none"
    out, start, prev = [], ids[0], ids[0]
    for i in [*ids[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
        if i is not None:
            start = prev = i
    return ", ".join(out)


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's state (names and bytes), first 16 hex digits."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(v.detach().cpu().numpy()).tobytes())
    return h.hexdigest()[:16]
