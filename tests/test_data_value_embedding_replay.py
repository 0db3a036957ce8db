"""Data value embedding's replay of the recorded run: it must end exactly at the trained model.

The digits CNN (float32, ReLU + MaxPool, Adam) once ended its replay 4% away from the trained weights:
a functional re-implementation of the step rounded differently by an ulp per step and training
amplified it. The replay now runs the trainer's own objective and ``torch.optim`` step, so the float32
weights are reproduced bit for bit; the tangents are then taken at those exact states.
"""

from __future__ import annotations

import pytest
import torch

import precompute.influence.data_value_embedding as dve
from precompute.config import ModelConfig, TrainConfig
from precompute.influence import InfluenceTask, get_estimator
from precompute.influence.runner import compute_train_factors
from precompute.models import build_model
from precompute.params import ParamSpace, select_parameters
from precompute.training import train_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cnn_task(optimizer: str, lr: float) -> InfluenceTask:
    """A tiny float32 CNN (conv-ReLU-MaxPool, 1x4x4 inputs) trained a few epochs with the built-in trainer."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 4, 4, generator=gen)
    y = (x[:, 0, :2].sum((1, 2)) > x[:, 0, 2:].sum((1, 2))).long() + (x[:, 0, 0, 0] > 0.7).long()
    model = build_model(ModelConfig(arch="cnn", hidden=[6]), (1, 4, 4), 3)
    assert next(model.parameters()).dtype == torch.float32
    cfg = TrainConfig(optimizer=optimizer, lr=lr, epochs=6, batch_size=8, weight_decay=1e-3, seed=1, checkpoints=1,
                      lr_schedule="cosine")
    result = train_model(model, x, y, cfg, record_trajectory=True)
    model.eval()
    return InfluenceTask(model=model, space=ParamSpace(model, select_parameters(model)), x_train=x, y_train=y,
                         weight_decay=1e-3, damping=0.0, trajectory=result.trajectory)


@pytest.mark.parametrize("optimizer,lr", [("adam", 0.05), ("sgd", 0.2)])
def test_replay_reproduces_a_float32_cnn_bit_for_bit(optimizer, lr):
    task = _cnn_task(optimizer, lr)
    est = get_estimator("data_value_embedding").fit(task)
    assert est.replay_error_ == 0.0
    final, _ = est._run(None)
    for name, p in task.model.named_parameters():
        assert torch.equal(final[name], p.detach()), name


def test_tangent_chunks_do_not_change_the_embeddings(monkeypatch):
    task = _cnn_task("adam", 0.05)
    whole = compute_train_factors(get_estimator("data_value_embedding").fit(task), task, 40)
    est = get_estimator("data_value_embedding").fit(task)
    per_row = dve.TANGENT_WORK_BUDGET // est._chunk(8)
    monkeypatch.setattr(dve, "TANGENT_WORK_BUDGET", 7 * per_row)  # 7 rows per vmapped call: 6 chunks of 40
    assert est._chunk(8) == 7
    rows = compute_train_factors(est, task, 40)
    assert whole.abs().max() > 0
    torch.testing.assert_close(rows, whole, rtol=1e-5, atol=1e-6 * float(whole.abs().max()))
