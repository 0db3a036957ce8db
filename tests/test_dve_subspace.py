"""Data value embedding's subspace solver (``_dve_subspace``) against the exact solver.

The adjoint sweep is the transpose of the exact solver's forward tangents through the same steps, so
at full rank (Q = I) it must give the exact embeddings to rounding, with SGD momentum, a learning-rate
schedule and Adam's two moments. Below full rank it sees them through the gradients' top directions:
checked for its ranking against exact, and the subspace against an eigendecomposition.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import precompute.influence.data_value_embedding as dve
from cache_format.metrics import mean_spearman
from precompute.config import ModelConfig, TrainConfig
from precompute.errors import ConfigError, MethodError
from precompute.influence import InfluenceTask, get_estimator
from precompute.influence._dve_subspace import gradient_subspace
from precompute.influence._toy import blobs
from precompute.influence.runner import (
    compute_scores,
    compute_self_influence,
    compute_train_factors,
)
from precompute.models import build_model
from precompute.params import ParamSpace, select_parameters
from precompute.training import train_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _task(optimizer: str, lr: float) -> tuple[InfluenceTask, torch.Tensor, torch.Tensor]:
    x, y = blobs(160, seed=1)
    model = build_model(ModelConfig(arch="mlp", hidden=[6], dtype="float64"), (8,), 3)
    cfg = TrainConfig(optimizer=optimizer, lr=lr, epochs=20, batch_size=16, weight_decay=1e-2, seed=3,
                      checkpoints=1)  # sgd: PyTorch momentum 0.9; a cosine schedule
    result = train_model(model, x[:120], y[:120], cfg, record_trajectory=True)
    model.eval()
    task = InfluenceTask(model=model, space=ParamSpace(model, select_parameters(model)), x_train=x[:120],
                         y_train=y[:120], weight_decay=1e-2, damping=0.0, trajectory=result.trajectory)
    return task, x[120:], y[120:]


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.2), ("adam", 0.01)])
def test_full_rank_subspace_solver_is_the_exact_solver(optimizer, lr):
    task, xs, ys = _task(optimizer, lr)
    if optimizer == "sgd":
        assert task.trajectory.momentum > 0 and len(set(task.trajectory.lrs)) > 1
    exact = get_estimator("data_value_embedding", {"solver": "exact"}).fit(task)
    sub = get_estimator("data_value_embedding", {"solver": "subspace", "rank": 10_000}).fit(task)
    info = sub.fit_info()
    assert info["solver"] == "subspace" and info["rank"] == task.space.size and info["replay_relative_error"] == 0
    e_exact, e_sub = compute_train_factors(exact, task, 50), compute_train_factors(sub, task, 50)
    assert float((e_sub - e_exact).norm() / e_exact.norm()) < 1e-10
    np.testing.assert_allclose(compute_scores(sub, task, xs, ys), compute_scores(exact, task, xs, ys), rtol=1e-8,
                               atol=1e-12)
    np.testing.assert_allclose(compute_self_influence(sub, task, 50), compute_self_influence(exact, task, 50),
                               rtol=1e-8, atol=1e-12)


def test_low_rank_subspace_solver_ranks_like_exact():
    task, xs, ys = _task("adam", 0.01)
    exact = compute_scores(get_estimator("data_value_embedding", {"solver": "exact"}), task, xs, ys)
    est = get_estimator("data_value_embedding", {"solver": "subspace", "rank": 32})
    low = compute_scores(est, task, xs, ys)
    assert est.fit_info()["rank"] == 32 and 0.9 < est.fit_info()["subspace_energy"] < 1
    assert mean_spearman(low, exact) >= 0.85  # measured 0.91 with 32 of p = 75 directions
    tiny = compute_scores(get_estimator("data_value_embedding", {"solver": "subspace", "rank": 4}), task, xs, ys)
    assert mean_spearman(tiny, exact) < mean_spearman(low, exact)  # fewer directions see less


def test_gradient_subspace_is_the_top_singular_subspace():
    task, _, _ = _task("adam", 0.01)
    G = task.gradients(task.x_train, task.y_train).double()
    evals, vecs = torch.linalg.eigh(G.T @ G)
    Q, energy = gradient_subspace(task, 8, seed=0, iters=6)
    assert torch.allclose(Q.T @ Q, torch.eye(8, dtype=Q.dtype), atol=1e-10)
    top = vecs[:, -8:]
    cosines = torch.linalg.svdvals(top.T @ Q)  # principal angles between the two subspaces
    assert float(cosines.min()) > 0.99
    assert energy == pytest.approx(float(evals[-8:].sum() / evals.sum()), rel=1e-3)
    assert gradient_subspace(task, task.space.size, seed=0) == (None, 1.0)


def test_auto_solver_and_rank_follow_the_work_budget(monkeypatch):
    task, _, _ = _task("sgd", 0.2)
    assert get_estimator("data_value_embedding").fit(task).fit_info()["solver"] == "exact"
    monkeypatch.setattr(dve, "WORK_BUDGET", 1.0)  # nothing is affordable: the smallest auto rank
    info = get_estimator("data_value_embedding").fit(task).fit_info()
    assert info["solver"] == "subspace" and info["rank"] == dve.AUTO_RANK[0]
    for bad in ({"solver": "fast"}, {"rank": 0}, {"rank": "all"}):
        with pytest.raises(ConfigError, match=f"data_value_embedding.{next(iter(bad))}"):
            get_estimator("data_value_embedding", bad)


def test_subspace_solver_still_refuses_a_model_its_trajectory_does_not_reproduce():
    task, _, _ = _task("adam", 0.01)
    other = build_model(ModelConfig(arch="mlp", hidden=[6], dtype="float64"), (8,), 3)
    other.load_state_dict({n: p.detach() + 0.1 for n, p in task.model.named_parameters()})
    wrong = dataclasses.replace(task, model=other.eval(), space=ParamSpace(other, select_parameters(other)))
    with pytest.raises(MethodError, match="does not reproduce"):
        get_estimator("data_value_embedding", {"solver": "subspace", "rank": 8}).fit(wrong)
