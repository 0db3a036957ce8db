"""Built-in architectures and feature extraction.

Every built-in model takes ``[n, *input_shape]`` and returns logits ``[n, n_classes]``; the last
module is an ``nn.Linear`` whose *input* is the penultimate-layer feature vector.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from precompute.config import ModelConfig
from precompute.errors import ModelError


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Build ``logreg`` / ``mlp`` / ``cnn`` for inputs of ``input_shape`` (C, H, W or D), or call the
    user's ``model.factory`` (a fresh, untrained instance: k-fold retraining uses this too)."""
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    if cfg.factory:
        from precompute.user_model import build_user_model

        return build_user_model(cfg.factory).to(dtype)
    n_in = math.prod(input_shape)
    if cfg.arch == "logreg":
        model = nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_classes))
    elif cfg.arch == "mlp":
        layers: list[nn.Module] = [nn.Flatten()]
        width = n_in
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        model = nn.Sequential(*layers)
    elif cfg.arch == "cnn":
        if len(input_shape) != 3:
            raise ModelError(f"model.arch: 'cnn' needs image inputs [C, H, W], got input shape {input_shape}; use 'mlp'")
        c, h, w = input_shape
        hid = cfg.hidden[0] if cfg.hidden else 32
        model = nn.Sequential(
            nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 2)),
            nn.Flatten(), nn.Linear(64, hid), nn.ReLU(), nn.Linear(hid, n_classes),
        )
    else:
        raise ModelError(f"model.arch: unknown architecture {cfg.arch!r}")
    return model.to(dtype)


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The model's last ``nn.Linear`` (the classifier head) and its name."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ModelError("model has no nn.Linear layer; cannot find the classifier head for features/last_layer")
    return found[-1]


@torch.no_grad()
def predict_with_features(model: nn.Module, x: Any, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over ``x`` ``[n, ...]`` (a tensor or lazy rows, read ``batch_size`` at a time):
    ``(logits [n, C], inputs of the last Linear layer [n, d])``, features via a forward pre-hook."""
    from precompute.data.source import iter_slices

    _, head = last_linear(model)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    try:
        logits = [model(xb) for xb in iter_slices(x, batch_size)]
    finally:
        handle.remove()
    return torch.cat(logits), torch.cat(captured).reshape(len(x), -1)


def penultimate_features(model: nn.Module, x: Any, batch_size: int = 1024) -> torch.Tensor:
    """Inputs of the last Linear layer, ``[n, d]``, gathered with a forward pre-hook."""
    return predict_with_features(model, x, batch_size)[1]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
