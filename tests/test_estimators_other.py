"""DataInf, TRAK and representer points against their own defining properties (the invariances
every registered method must satisfy are in test_estimator_contract.py)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from precompute.config import ModelConfig, TrainConfig
from precompute.influence import InfluenceTask, estimator_class, get_estimator
from precompute.influence._toy import blobs, tiny_task
from precompute.influence.runner import compute_scores, compute_train_factors
from precompute.influence.trak import margin
from precompute.models import build_model
from precompute.params import ParamSpace, select_parameters
from precompute.training import train_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mlp():
    return tiny_task("mlp", damping=0.1)


def scores_of(method: str, task: InfluenceTask, xs, ys, options: dict | None = None, **kw) -> np.ndarray:
    opts = estimator_class(method).quick_options if options is None else options
    return compute_scores(get_estimator(method, opts), task, xs, ys, **kw)


def test_lissa_stochastic_sampling_is_chunk_invariant(mlp):
    task, xs, ys = mlp
    opts = {"depth": 40, "batch_size": 20, "repeats": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = compute_scores(get_estimator("lissa", opts), task, xs, ys, test_batch_size=256)
        parts = compute_scores(get_estimator("lissa", opts), task, xs, ys, test_batch_size=4)
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6 * np.abs(whole).max())


def test_datainf_matches_its_closed_form_and_layers_sum(mlp):
    task, xs, ys = mlp
    est = get_estimator("datainf").fit(task)
    q = est.query_factors(xs[:3], ys[:3])
    v = task.gradients(xs[:3], ys[:3])
    g = task.gradients(task.x_train, task.y_train)
    mu = task.weight_decay + 0.1
    for s in task.space.layer_slices().values():
        eye = torch.eye(s.stop - s.start, dtype=torch.float64)
        inv = sum(torch.linalg.inv(torch.outer(gi[s], gi[s]) + mu * eye) for gi in g) / len(g)
        assert torch.allclose(q[:, s], v[:, s] @ inv, rtol=1e-9, atol=1e-12)
    t = compute_train_factors(est, task, 16)
    parts = est.layer_scores(q, t)
    assert len(parts) == 2 and torch.allclose(sum(parts.values()), est.scores(q, t), atol=1e-12)


def test_trak_margin_and_newton_weight(mlp):
    task, xs, ys = mlp
    logits = task.model(xs).detach()
    p = torch.softmax(logits, 1).gather(1, ys[:, None])[:, 0]
    assert torch.allclose(margin(logits, ys), torch.log(p) - torch.log1p(-p), atol=1e-10)
    # no projection (p <= proj_dim), final model: phi_i * (1 - p_i) is minus the loss gradient
    est = get_estimator("trak", {"checkpoints": "final", "proj_dim": 10_000}).fit(task)
    assert torch.allclose(est.train_factors(xs, ys), -task.gradients(xs, ys), atol=1e-10)


def test_trak_ensemble_is_the_mean_over_models(mlp):
    task, xs, ys = mlp
    assert len(task.checkpoints) == 3
    ens = scores_of("trak", task, xs, ys)
    singles = [compute_scores(get_estimator("trak", {"proj_dim": 32, "seed": m}),
                              dataclasses.replace(task, checkpoints=[ck]), xs, ys)
               for m, ck in enumerate(task.checkpoints)]
    np.testing.assert_allclose(ens, np.mean(singles, axis=0), rtol=1e-5, atol=1e-6 * np.abs(ens).max())
    assert not np.allclose(singles[0], singles[-1])  # the checkpoints really differ


def test_trak_kept_train_rows_equal_recomputed_and_cholesky_equals_eigh(mlp, monkeypatch):
    import precompute.influence.trak as trak

    task, xs, ys = mlp
    kept = get_estimator("trak", {"proj_dim": 16}).fit(task)
    assert kept.train_phi_rows_ is not None and bool(kept.train_phi_rows_.all())
    monkeypatch.setattr(trak, "TRAIN_PHI_CACHE_MAX", 0)
    fresh = get_estimator("trak", {"proj_dim": 16}).fit(task)
    assert fresh.train_phi_rows_ is None
    for s, e in ((0, task.n_train), (3, 11)):  # row slices of task.x_train: from the kept rows
        assert kept._kept_rows(task.x_train[s:e], task.y_train[s:e]) == s
        torch.testing.assert_close(kept.train_factors(task.x_train[s:e], task.y_train[s:e]),
                                   fresh.train_factors(task.x_train[s:e], task.y_train[s:e]), rtol=1e-10, atol=1e-12)
    copy_x = task.x_train[3:11].clone()  # equal rows, other storage: recomputed
    assert kept._kept_rows(copy_x, task.y_train[3:11]) is None
    assert kept._kept_rows(task.x_train[3:11], task.y_train[4:12]) is None
    assert kept._kept_rows(task.x_train[::2], task.y_train[::2]) is None
    torch.testing.assert_close(kept.train_factors(copy_x, task.y_train[3:11]),
                               fresh.train_factors(task.x_train[3:11], task.y_train[3:11]), rtol=1e-10, atol=1e-12)
    a = torch.randn(40, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gram = a.T @ a / 40
    evals, evecs = torch.linalg.eigh(gram)
    torch.testing.assert_close(trak._damped_inverse(gram, 0.1), (evecs / (evals + 0.1)) @ evecs.T)
    low = torch.zeros(4, 4, dtype=torch.float64)
    low[0, 0] = 2.0  # singular, no damping: the eigendecomposition's pseudo-inverse
    torch.testing.assert_close(trak._damped_inverse(low, 0.0), torch.diag(torch.tensor([0.5, 0, 0, 0],
                                                                                      dtype=torch.float64)))


def test_representer_decomposes_the_head_at_its_optimum():
    x, y = blobs(60)
    model = build_model(ModelConfig(arch="logreg", hidden=[], dtype="float64"), (8,), 3)
    train_model(model, x, y, TrainConfig(optimizer="lbfgs", lr=1.0, epochs=30, weight_decay=0.05, checkpoints=1))
    task = InfluenceTask(model, ParamSpace(model, select_parameters(model)), x, y, 0.05, 0.1)
    est = get_estimator("representer").fit(task)
    alpha_f = est.train_factors(x, y).reshape(60, 3, 9).sum(0)  # sum_i alpha_i f_i^T, [C, d + 1]
    head = model[1]
    assert torch.allclose(alpha_f, torch.cat([head.weight, head.bias[:, None]], 1).detach(), atol=1e-6)
    s = compute_scores(est, task, x[:4], y[:4])
    feats = torch.cat([x, torch.ones(60, 1, dtype=x.dtype)], 1)
    alpha = (nn.functional.one_hot(y, 3) - torch.softmax(model(x), 1).detach()) / (0.05 * 60)
    direct = alpha[:, y[:4]].T * (feats[:4] @ feats.T)
    np.testing.assert_allclose(s, direct.numpy(), rtol=1e-5)
