"""Python API for notebooks: explain an in-memory model and data, or run a config, get numpy back.

>>> from precompute.api import explain
>>> result = explain(model, x_train, y_train, x_test, y_test, methods=["exact", "graddot"])
>>> result.scores("exact").shape            # [n_test, n_train], positive = proponent
>>> result.top_proponents("exact", test=0)  # training indices, strongest first
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cache_format.runs import RunCache
from precompute.config import InfluenceConfig, RunConfig, TrainConfig, load_config
from precompute.data.tabular import arrays_to_dataset
from precompute.pipeline import run_precompute
from precompute.training import Checkpoint


@dataclass
class RunResult:
    """A finished run: its cache folder and numpy access to what it holds."""

    path: Path
    timings: dict[str, float]

    @property
    def run(self) -> RunCache:
        return RunCache(self.path)

    def scores(self, method: str) -> np.ndarray:
        """``[n_test, n_train]`` float32 (memory-mapped); positive = proponent."""
        return self.run.scores(method)

    def self_influence(self, method: str) -> np.ndarray:
        return np.asarray(self.run.method_array(method, "self_influence"))

    def top_proponents(self, method: str, test: int, k: int = 10) -> np.ndarray:
        return np.asarray(self.run.method_array(method, "top_proponents")[test, :k])

    def top_opponents(self, method: str, test: int, k: int = 10) -> np.ndarray:
        return np.asarray(self.run.method_array(method, "top_opponents")[test, :k])


def _numpy(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def explain(model: nn.Module, x_train, y_train, x_test, y_test, *, name: str = "notebook",
            cache_dir: str | Path = "cache", methods: Sequence[str] = ("exact", "graddot", "tracin"),
            class_names: Sequence[str] | None = None, checkpoints: Sequence[dict[str, torch.Tensor]] | None = None,
            checkpoint_lrs: Sequence[float] | None = None, weight_decay: float = 0.0, damping: float | str = 1e-3,
            params: str | list[str] = "all", topk: int = 50, device: str = "auto", progress: bool = False,
            method_options: dict[str, dict[str, Any]] | None = None) -> RunResult:
    """Compute influence of a trained ``model`` (logits ``[n, C]``) and write a cache the explorer opens.

    ``x_*``: arrays/tensors ``[n, d]`` or images ``[n, (C,) H, W]``; ``y_*``: class indices ``[n]``.
    ``weight_decay`` is the L2 coefficient the model was trained with (the Hessian includes it);
    ``checkpoints`` (state_dicts, oldest first) feed TracIn, weighted by ``checkpoint_lrs``.
    Always recomputes (``overwrite``): a notebook re-run reflects the current model and data.
    """
    ds = arrays_to_dataset(name, _numpy(x_train), _numpy(y_train), _numpy(x_test), _numpy(y_test),
                           list(class_names) if class_names is not None else None, where="explain()")
    dtype = next(model.parameters()).dtype
    cfg = RunConfig(name=name, device=device)
    cfg.data.source = "python"
    cfg.model.dtype = "float64" if dtype == torch.float64 else "float32"
    cfg.train = TrainConfig(weight_decay=weight_decay)
    cfg.influence = InfluenceConfig(methods=list(methods), damping=damping, params=params, topk=topk,
                                    options=dict(method_options or {}))
    cfg.mislabels.enabled = False  # k-fold retraining needs a model recipe; use a config run for it
    ckpts = None
    if checkpoints:
        lrs = list(checkpoint_lrs) if checkpoint_lrs is not None else [1.0] * len(checkpoints)
        ckpts = [Checkpoint(epoch=i + 1, lr=lr, state_dict=dict(sd))
                 for i, (sd, lr) in enumerate(zip(checkpoints, lrs, strict=True))]
    result = run_precompute(cfg, cache_dir=cache_dir, overwrite=True, progress=progress, log=lambda _m: None,
                            dataset=ds, model=model, checkpoints=ckpts)
    return RunResult(path=result.path, timings=result.timings)


def precompute(config: str | Path | RunConfig, cache_dir: str | Path = "cache", overwrite: bool = False,
               progress: bool = True) -> RunResult:
    """Run a TOML config (or a :class:`RunConfig`) exactly as the CLI does."""
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    result = run_precompute(cfg, cache_dir=cache_dir, overwrite=overwrite, progress=progress)
    return RunResult(path=result.path, timings=result.timings)
