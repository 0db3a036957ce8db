"""Which process of a ``torchrun`` launch this is, and the few collectives precompute needs.

``torchrun`` (``torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every process it starts; with
``WORLD_SIZE > 1`` :func:`init_from_env` joins the process group (``gloo`` on CPU, ``nccl`` on CUDA).
Without those variables (a plain ``python -m precompute.cli precompute``) the context is the single
process ``rank 0 of 1`` and every collective is the identity, so one code path serves both.

Work is split by fixed units whose boundaries do not depend on the number of processes (training
batches, store chunks, test blocks, self-influence blocks): unit ``i`` belongs to rank ``i % world``.
Each unit is computed by the same code whatever the world size, so a 2-rank run stores the same
bytes as a 1-rank run; only the statistics summed over units (K-FAC factors, TRAK's kernel, net
influence) may differ in the last float64 bits, because the partial sums are grouped differently.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from precompute.errors import ConfigError

#: how long a collective waits for the other ranks (a slow rank-0-only stage, a big store pass)
DEFAULT_TIMEOUT_S = 4 * 3600


@dataclass(frozen=True)
class DistContext:
    """``rank`` of ``world`` processes (``local_rank`` of ``local_world`` on this machine)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ who does what
    def owns(self, unit: int) -> bool:
        """Whether work unit ``unit`` (a batch, chunk or block index) is this rank's."""
        return unit % self.world == self.rank

    def mine(self, units: Iterable[int]) -> list[int]:
        """This rank's share of ``units``, dealt round-robin in the order given (``units[rank::world]``):
        a resumed run deals just the missing chunks among however many ranks it has."""
        return list(units)[self.rank::self.world]

    def batch_starts(self, n: int, batch_size: int) -> range:
        """Start rows of this rank's training batches: batch ``b`` covers rows ``b*bs:(b+1)*bs``."""
        return range(self.rank * batch_size, n, self.world * batch_size)

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def all_reduce_sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each tensor over ranks, in place (float64 accumulators; ints as int64)."""
        if not self.active:
            return
        for t in tensors:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)

    def all_reduce_int(self, value: int) -> int:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(t)
        return int(t.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable; small things: paths, budgets, checkpoints)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    @property
    def device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def tag(self) -> str:
        """``"[rank 1/2] "`` in a multi-process run, else ``""`` (log prefixes)."""
        return f"[rank {self.rank}/{self.world}] " if self.active else ""

    def summary(self) -> dict[str, Any]:
        return {"world_size": self.world, "backend": self.backend, "local_world_size": self.local_world}


SINGLE = DistContext()
_current: DistContext = SINGLE


def current() -> DistContext:
    """The context of this process (``SINGLE`` unless :func:`init_from_env` joined a group)."""
    return _current


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer (set by torchrun); "
                          "launch with torchrun or unset it") from None


def init_from_env(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the process group torchrun described in the environment (a no-op for one process).

    ``device`` picks the backend: ``nccl`` when the run uses CUDA (each process on GPU
    ``LOCAL_RANK``), ``gloo`` otherwise."""
    global _current
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        _current = SINGLE
        return _current
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with torchrun")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if torch.cuda.device_count() <= local_rank:
            raise ConfigError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                              "start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    _current = DistContext(rank=rank, world=world, local_rank=local_rank, local_world=local_world, backend=backend)
    return _current


def use(ctx: DistContext) -> None:
    """Make ``ctx`` this process's context (tests with ``torch.multiprocessing.spawn``)."""
    global _current
    _current = ctx


def shutdown() -> None:
    """Leave the process group (end of a distributed run)."""
    global _current
    if _current.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _current = SINGLE
