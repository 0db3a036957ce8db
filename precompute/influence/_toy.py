"""Tiny float64 influence tasks (Gaussian blobs, small MLP/CNN) for tests and quick checks: seconds to fit."""

from __future__ import annotations

import torch
from torch import nn

from precompute.config import ModelConfig, TrainConfig
from precompute.influence.base import InfluenceTask
from precompute.models import build_model
from precompute.params import ParamSpace, select_parameters
from precompute.training import train_model


def blobs(n: int, n_classes: int = 3, dim: int = 8, seed: int = 0, spread: float = 1.2) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [n, dim]`` float64 around seeded class centres (overlapping a little), ``y [n]``."""
    gen = torch.Generator().manual_seed(1234)
    centres = torch.randn(n_classes, dim, generator=gen, dtype=torch.float64) * 1.5
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    x = centres[y] + spread * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    return x, y


def tiny_task(arch: str = "mlp", n_train: int = 60, n_test: int = 15, damping: float | str = 0.01,
              weight_decay: float = 1e-2, epochs: int = 30, seed: int = 0
              ) -> tuple[InfluenceTask, torch.Tensor, torch.Tensor]:
    """A trained float64 model with checkpoints: ``(task, x_test, y_test)``.

    ``mlp``: 8 -> 6 (tanh) -> 3 on blobs (p = 75). ``cnn``: 1x6x6 images (blobs reshaped to 36 dims)
    through Conv2d(1, 2, 3, padding=1) -> ReLU -> Conv2d(2, 2, 2, stride=2) -> Flatten -> Linear(18, 3).
    """
    if arch == "mlp":
        x, y = blobs(n_train + n_test, seed=seed)
        model = build_model(ModelConfig(arch="mlp", hidden=[6], dtype="float64"), (8,), 3)
    else:
        x, y = blobs(n_train + n_test, dim=36, seed=seed)
        x = x.reshape(-1, 1, 6, 6)
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 2, stride=2), nn.Flatten(),
                              nn.Linear(18, 3)).to(torch.float64)
    cfg = TrainConfig(optimizer="adam", lr=0.05, epochs=epochs, batch_size=20, weight_decay=weight_decay,
                      seed=seed, checkpoints=3)
    xt, yt, xs, ys = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    result = train_model(model, xt, yt, cfg, record_trajectory=True)
    model.eval()
    space = ParamSpace(model, select_parameters(model))
    task = InfluenceTask(model=model, space=space, x_train=xt, y_train=yt, weight_decay=weight_decay,
                         damping=damping, checkpoints=result.checkpoints, batch_size=32, trajectory=result.trajectory)
    return task, xs, ys
