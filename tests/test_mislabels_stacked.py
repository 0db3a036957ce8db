"""The stacked fold training (precompute/mislabels/stacked.py) takes the steps train_model takes per fold."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from precompute.config import ModelConfig, TrainConfig
from precompute.mislabels.oof import out_of_fold_probs
from precompute.mislabels.stacked import can_stack, train_stacked
from precompute.models import build_model
from precompute.training import train_model

TRAIN = TrainConfig(optimizer="adam", lr=0.02, epochs=6, batch_size=16, weight_decay=1e-3, seed=3,
                    checkpoints=1, lr_schedule="cosine")


def _data(n: int = 90, shape: tuple[int, ...] = (1, 6, 6), classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


@pytest.mark.parametrize(("arch", "hidden", "optimizer"), [("mlp", [7], "adam"), ("cnn", [5], "adam"),
                                                            ("logreg", [], "sgd")])
def test_stacked_folds_equal_fold_by_fold_training_in_float64(arch, hidden, optimizer):
    x, y = _data()
    cfg = dataclasses.replace(TRAIN, optimizer=optimizer)
    mcfg = ModelConfig(arch=arch, hidden=hidden, dtype="float64")
    # fold sizes 61, 60, 59: the last minibatch differs between folds (13, 12, 11 rows): the padded path
    rows = [torch.arange(0, 61), torch.arange(20, 80), torch.arange(31, 90)]
    seeds = [11, 12, 13]
    stacked = [build_model(mcfg, (1, 6, 6), 4) for _ in rows]
    assert can_stack(stacked[0], cfg, x, [len(r) for r in rows])
    train_stacked(stacked, x, y, rows, cfg, seeds)
    for model, r, s in zip(stacked, rows, seeds, strict=True):
        ref = build_model(mcfg, (1, 6, 6), 4)
        train_model(ref, x[r], y[r], cfg, init_seed=s)
        moved = 0.0
        for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
            assert torch.allclose(p, q, rtol=0, atol=1e-10), (arch, name, (p - q).abs().max().item())
            moved = max(moved, (q - build_model(mcfg, (1, 6, 6), 4).get_parameter(name)).abs().max().item())
        assert moved > 1e-3  # the models did train


def test_folds_with_different_minibatch_counts_or_unknown_layers_are_not_stacked():
    x, y = _data()
    model = build_model(ModelConfig(arch="mlp", hidden=[4], dtype="float64"), (1, 6, 6), 4)
    assert not can_stack(model, TRAIN, x, [64, 65])  # 4 vs 5 minibatches of 16
    assert not can_stack(model, dataclasses.replace(TRAIN, optimizer="lbfgs"), x, [60, 60])
    assert not can_stack(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(36)), TRAIN, x, [60, 60])
    assert not can_stack(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(), torch.nn.Linear(36, 4)),
                         TRAIN, x, [60, 60])
    assert can_stack(model, TRAIN, x, [60, 62])


def test_out_of_fold_probs_stacked_equal_the_fold_by_fold_path(monkeypatch):
    x, y = _data(n=80, shape=(12,))
    mcfg = ModelConfig(arch="mlp", hidden=[6], dtype="float64")
    probs, fold = out_of_fold_probs(x.numpy(), y.numpy(), 4, mcfg, TRAIN, folds=4, seed=1)
    monkeypatch.setattr("precompute.mislabels.oof.can_stack", lambda *a: False)
    ref, ref_fold = out_of_fold_probs(x.numpy(), y.numpy(), 4, mcfg, TRAIN, folds=4, seed=1)
    assert np.array_equal(fold, ref_fold)
    assert np.allclose(probs, ref, atol=1e-6) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert probs.std() > 0.01
