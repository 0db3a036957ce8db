"""Which gradient compressor a run uses: the configured one, or automatically one that fits.

``influence.compression.kind`` unset (or ``"auto"``): no compression while the exact per-sample
gradients of the whole training set, ``n_train x p`` float32, fit the memory budget; beyond it the
factored (LoGra) projection at its default width, with a log line saying so. Only methods that declare
``capabilities.compressed_store`` use it; Hessian-based methods always see exact gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from precompute.config import RunConfig
from precompute.errors import ConfigError
from precompute.params import ParamSpace


def compression_config(compression: dict[str, Any], kind: str | None = None) -> Any:
    """``influence.compression`` as a validated ``CompressionConfig`` (``kind`` overrides "auto")."""
    from precompute.compression import CompressionConfig

    opts = {k: v for k, v in compression.items() if k != "kind"}
    kind = kind or compression.get("kind", "auto")
    try:
        return CompressionConfig(kind="none" if kind == "auto" else kind, **opts).validate()
    except TypeError as exc:
        raise ConfigError(f"influence.compression: {exc}; known keys: kind, dim, layer_dims, seed, dense_below, "
                          "dtype") from None


def resolve_kind(cfg: RunConfig, n_train: int, p: int, budget: int) -> tuple[str, str]:
    """``(kind, why)`` for this run."""
    kind = cfg.influence.compression.get("kind", "auto")
    if kind != "auto":
        return kind, "configured"
    need = n_train * p * 4
    if need <= budget:
        return "none", f"exact gradients fit the memory budget ({need / 2**30:.2f} of {budget / 2**30:.2f} GB)"
    return "factored", (f"exact gradients would need {need / 2**30:.1f} GB ({n_train:,} x {p:,} float32), above the "
                        f"memory budget of {budget / 2**30:.1f} GB")


def build_compressor(cfg: RunConfig, model: torch.nn.Module, space: ParamSpace, x_train: torch.Tensor,
                     estimators: list[Any], budget: int, log: Callable[[str], None]) -> Any:
    """The fitted compressor for the run's compressible methods, or None (exact gradients)."""
    from precompute.compression import GradientCompressor

    users = [e.name for e in estimators if e.capabilities.compressed_store]
    kind, why = resolve_kind(cfg, len(x_train), space.size, budget)
    comp_cfg = compression_config(cfg.influence.compression, kind)
    if kind == "none" or not users:
        return None
    comp = GradientCompressor.create(comp_cfg, model, space, x_train[:2])
    log(f"[compression] {kind} gradient compression to k = {comp.dim:,} of p = {space.size:,} for "
        f"{', '.join(users)} ({why})")
    return comp
