"""Bundled digits sample, label noise, deterministic training with checkpoints."""

from __future__ import annotations

import numpy as np
import torch

from precompute.config import DataConfig, ModelConfig, TrainConfig
from precompute.data import inject_label_noise, load_dataset
from precompute.models import build_model, penultimate_features
from precompute.training import checkpoint_epochs, train_model


def test_digits_split_is_deterministic_and_stratified() -> None:
    a, b = load_dataset(DataConfig()), load_dataset(DataConfig())
    assert (a.n_train, a.n_test, a.n_classes) == (1437, 360, 10)
    assert np.array_equal(a.train_source_index, b.train_source_index)
    assert not set(a.train_source_index) & set(a.test_source_index)
    train_frac = np.bincount(a.y_train) / a.n_train
    test_frac = np.bincount(a.y_test) / a.n_test
    assert np.abs(train_frac - test_frac).max() < 0.01
    assert a.images_train.dtype == np.uint8 and a.images_train.shape == (1437, 8, 8)
    assert a.images_train.max() == 255 and a.x_train.max() <= 1.0
    other = load_dataset(DataConfig(split_seed=1))
    assert not np.array_equal(a.train_source_index, other.train_source_index)


def test_label_noise_flips_exactly_the_recorded_labels() -> None:
    ds = load_dataset(DataConfig(label_noise=0.1, noise_seed=3))
    assert ds.flipped.sum() == round(0.1 * ds.n_train)
    assert (ds.y_train[ds.flipped] != ds.y_train_original[ds.flipped]).all()
    assert (ds.y_train[~ds.flipped] == ds.y_train_original[~ds.flipped]).all()
    again = load_dataset(DataConfig(label_noise=0.1, noise_seed=3))
    assert np.array_equal(ds.y_train, again.y_train)
    y, flipped = inject_label_noise(np.zeros(100, np.int64), 10, 0.2, seed=1)
    assert flipped.sum() == 20 and (y[flipped] > 0).all()


def test_training_is_deterministic_and_saves_checkpoints() -> None:
    ds = load_dataset(DataConfig())
    x, y = torch.tensor(ds.x_train[:300]), torch.tensor(ds.y_train[:300])
    cfg = TrainConfig(epochs=6, checkpoints=3, lr=0.01)
    runs = []
    for _ in range(2):
        model = build_model(ModelConfig(arch="mlp", hidden=[16]), ds.input_shape, 10)
        runs.append((model, train_model(model, x, y, cfg)))
    (m1, r1), (m2, r2) = runs
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters(), strict=True))
    assert [c.epoch for c in r1.checkpoints] == checkpoint_epochs(6, 3) == [2, 4, 6]
    assert checkpoint_epochs(3, 5) == [1, 2, 3]
    assert r1.checkpoints[0].lr > r1.checkpoints[-1].lr  # cosine schedule recorded per checkpoint
    assert r1.history[-1]["train_accuracy"] > 0.8
    assert r1.history[-1]["train_loss"] < r1.history[0]["train_loss"]
    final = r1.checkpoints[-1].state_dict
    assert all(torch.equal(final[n], p) for n, p in m1.state_dict().items())
    assert penultimate_features(m1, x).shape == (300, 16)
