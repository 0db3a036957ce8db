"""Retraining the run's model on a subset of its training data, serially or in a process pool.

Two ways to retrain (``mode``):

- ``warm``: start from the trained model, cast to float64, and run full-batch L-BFGS on the subset's
  objective (mean cross-entropy + weight_decay/2 ||theta||^2) until the largest gradient entry is
  below ``GRAD_TOL``. For a convex model this *is* the recipe's answer (the optimum is unique), just
  reached faster and more precisely; leave-one-out differences of ~1e-6 need that precision.
- ``recipe``: the run's own training recipe (``train_model`` with the run's config) from a seeded
  initialisation; the only honest choice for non-convex models.

Workers are spawned processes (``torch.set_num_threads(1)`` each) that load the run once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from precompute.evaluation.context import RunContext
from precompute.training import objective, train_model

#: warm-mode convergence: largest |gradient entry| of the objective. Leave-one-out differences are
#: ~1e-5 of the loss and need the tight value; subset and removal retrains move the model much more.
GRAD_TOL = 1e-9
GRAD_TOL_COARSE = 1e-6
MAX_LBFGS_ROUNDS = 40


def derive_seed(*parts: int | str) -> int:
    """A deterministic 31-bit seed from (base seed, subset id, repeat, ...)."""
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class RetrainJob:
    """Train on ``keep`` (training indices; None = all) with ``seed`` (recipe mode) in ``mode``;
    ``tol``: warm-mode gradient tolerance."""

    keep: np.ndarray | None
    seed: int
    mode: str
    tol: float = GRAD_TOL_COARSE


@dataclass
class RetrainOutput:
    """The retrained model on the test set: ``test_loss`` and ``margin`` ``[n_test]`` float64 (margin =
    true-class logit minus the largest other logit), ``pred`` ``[n_test]`` int64, and convergence info."""

    test_loss: np.ndarray
    margin: np.ndarray
    pred: np.ndarray
    grad_max: float = float("nan")


def test_outputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with torch.no_grad():
        logits = model(x).to(torch.float64)
        loss = nn.functional.cross_entropy(logits, y, reduction="none")
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf")).max(1).values
        return loss.numpy(), (true - other).numpy(), logits.argmax(1).numpy()


def retrain_warm(ctx: RunContext, keep: np.ndarray | None, tol: float = GRAD_TOL) -> tuple[nn.Module, float]:
    """Converge the float64 model on ``keep`` from the trained parameters; returns (model, max |grad|)."""
    model = ctx.model(torch.float64)
    x = ctx.x_train.to(torch.float64)
    y = ctx.y_train
    if keep is not None:
        idx = torch.as_tensor(keep, dtype=torch.long)
        x, y = x[idx], y[idx]
    wd = ctx.cfg.train.weight_decay
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=200, history_size=50, line_search_fn="strong_wolfe",
                            tolerance_grad=tol, tolerance_change=1e-20)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective(model, x, y, wd)
        loss.backward()
        return loss

    gmax = float("inf")
    for _ in range(MAX_LBFGS_ROUNDS):
        opt.step(closure)
        closure()
        gmax = max(float(p.grad.abs().max()) for p in params)
        if gmax <= tol:
            break
    model.eval()
    return model, gmax


def retrain_recipe(ctx: RunContext, keep: np.ndarray | None, seed: int) -> nn.Module:
    """The run's recipe from a fresh init seeded with ``seed`` (minibatch order seeded too)."""
    from precompute.models import build_model

    model = build_model(ctx.cfg.model, ctx.ds.input_shape, ctx.ds.n_classes)
    x, y = ctx.x_train, ctx.y_train
    if keep is not None:
        idx = torch.as_tensor(keep, dtype=torch.long)
        x, y = x[idx], y[idx]
    train_cfg = dataclasses.replace(ctx.cfg.train, seed=seed, checkpoints=1)
    train_model(model, x, y, train_cfg, init_seed=seed)
    return model.eval()


def run_job(ctx: RunContext, job: RetrainJob) -> RetrainOutput:
    if job.mode == "warm":
        model, gmax = retrain_warm(ctx, job.keep, job.tol)
        x = ctx.x_test.to(torch.float64)
    else:
        model, gmax = retrain_recipe(ctx, job.keep, job.seed), float("nan")
        x = ctx.x_test
    loss, margin, pred = test_outputs(model, x, ctx.y_test)
    return RetrainOutput(test_loss=loss, margin=margin, pred=pred, grad_max=gmax)


# ---------------------------------------------------------------------------- process pool
_WORKER_CTX: RunContext | None = None


def _watch_parent(parent: int) -> None:
    """Exit when the evaluating process is gone (killed), instead of lingering as an orphan."""
    import os
    import time

    while True:
        time.sleep(2.0)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(run_dir: str, parent: int) -> None:
    global _WORKER_CTX
    import threading

    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(1)
    _WORKER_CTX = RunContext.load(run_dir)


def _worker_run(job: RetrainJob) -> RetrainOutput:
    assert _WORKER_CTX is not None
    return run_job(_WORKER_CTX, job)


class Retrainer:
    """Runs :class:`RetrainJob` lists for one run; ``workers > 1`` uses a spawned process pool that is
    started on first use and reused until :meth:`close` (use as a context manager)."""

    def __init__(self, ctx: RunContext, workers: int = 2, progress: bool = True):
        self.ctx = ctx
        self.workers = workers
        self.progress = progress
        self.count = 0
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Retrainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def mode(self, requested: str) -> str:
        if requested == "auto":
            return "warm" if self.ctx.convex else "recipe"
        return requested

    def run(self, jobs: Sequence[RetrainJob], desc: str = "retrain") -> list[RetrainOutput]:
        """Results in job order."""
        out: list[RetrainOutput | None] = [None] * len(jobs)
        bar = tqdm(total=len(jobs), desc=desc, unit="model", disable=not self.progress, leave=False)
        try:
            if self.workers <= 1 or len(jobs) <= 1:
                for i, job in enumerate(jobs):
                    out[i] = run_job(self.ctx, job)
                    bar.update(1)
            else:
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(max_workers=self.workers,
                                                     mp_context=multiprocessing.get_context("spawn"),
                                                     initializer=_init_worker,
                                                     initargs=(str(self.ctx.run_dir), os.getpid()))
                futures = {self._pool.submit(_worker_run, job): i for i, job in enumerate(jobs)}
                pending = set(futures)
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in done:
                            out[futures[f]] = f.result()
                            bar.update(1)
                except BaseException:
                    for f in pending:
                        f.cancel()
                    raise
        finally:
            bar.close()
        self.count += len(jobs)
        return out  # type: ignore[return-value]


def keep_without(n_train: int, removed: np.ndarray) -> np.ndarray:
    """Training indices left after removing ``removed``."""
    mask = np.ones(n_train, bool)
    mask[np.asarray(removed, dtype=np.int64)] = False
    return np.flatnonzero(mask)
