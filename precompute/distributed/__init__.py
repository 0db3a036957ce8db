"""Precompute across processes and machines on torch.distributed (launched with torchrun)."""

from precompute.distributed.context import SINGLE, DistContext, current, init_from_env, shutdown

__all__ = ["SINGLE", "DistContext", "current", "init_from_env", "shutdown"]
