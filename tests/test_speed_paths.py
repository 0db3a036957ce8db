"""The fast paths of issue 19 against their reference formulations (tiny float64 models, no timing):
exact's Cholesky solve vs the eigendecomposition, TracIn's per-checkpoint blocks vs grad-dot per
checkpoint, blocked self-influence from a chunked store vs the diagonal, LiSSA/CG self-influence."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from precompute.influence import get_estimator
from precompute.influence._toy import tiny_task
from precompute.influence.exact import extreme_eigenvalues
from precompute.influence.runner import compute_scores, compute_train_factors
from precompute.store import GradientStore, StoreSpec
from precompute.store.scoring import self_influence_from_store, self_influence_rows, train_factor_fn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mlp():
    return tiny_task("mlp", damping=0.1)


def _eigh_reference(H: torch.Tensor, lam: float) -> torch.Tensor:
    """The previous implementation: ``(H + lam I)^-1`` from a full eigendecomposition."""
    evals, evecs = torch.linalg.eigh(H)
    return (evecs / (evals + lam)) @ evecs.T


def test_exact_cholesky_equals_the_eigendecomposition_path(mlp):
    task, xs, ys = mlp
    est = get_estimator("exact").fit(task)
    inv = _eigh_reference(est.hessian_, 0.1)
    g_test, g_train = task.gradients(xs, ys), task.gradients(task.x_train, task.y_train)
    ref = g_test @ inv @ g_train.T  # [n_test, n_train] float64
    ours = est.query_factors(xs, ys) @ est.train_factors(task.x_train, task.y_train).T
    assert torch.abs(ours - ref).max() <= 1e-10 * torch.abs(ref).max()
    assert torch.allclose(est.solve(g_test), g_test @ inv, rtol=0, atol=1e-10 * float((g_test @ inv).abs().max()))
    self_ref = ((g_train @ inv) * g_train).sum(1)
    assert torch.allclose(est.self_influence(task.x_train, task.y_train), self_ref, rtol=1e-10)
    ev = torch.linalg.eigvalsh(est.hessian_)
    info = est.fit_info()
    assert abs(info["hessian_max_eigenvalue"] - float(ev[-1])) <= 1e-8 * float(ev.abs().max())  # p = 75 <= steps
    assert abs(info["hessian_min_eigenvalue"] - float(ev[0])) <= 1e-8 * float(ev.abs().max())
    assert torch.allclose(est.eigenvalues_, ev)


def test_lanczos_extremes_bound_the_spectrum_from_inside():
    gen = torch.Generator().manual_seed(0)
    p = 300
    a = torch.randn(p, p, generator=gen, dtype=torch.float64)
    H = a @ a.T / p - 0.3 * torch.eye(p, dtype=torch.float64)  # indefinite, dense bulk at both ends
    lam = 1.0
    chol = torch.linalg.cholesky(H + lam * torch.eye(p, dtype=torch.float64))
    lo, hi = extreme_eigenvalues(H, lambda v: torch.cholesky_solve(v.T, chol).T, lam, steps=60)
    ev = torch.linalg.eigvalsh(H)
    assert float(ev[0]) <= lo <= float(ev[0]) + 1e-2 and float(ev[-1]) - 1e-2 <= hi <= float(ev[-1])


def test_exact_indefinite_raises_with_the_smallest_eigenvalue():
    task, _, _ = tiny_task("mlp", damping=0.0, weight_decay=0.0)
    from precompute.errors import MethodError

    with pytest.raises(MethodError, match="not positive definite.*raise influence.damping above"):
        get_estimator("exact", {"damping": 0.0}).fit(task)


def test_tracin_is_the_lr_weighted_sum_of_per_checkpoint_grad_dots(mlp):
    task, xs, ys = mlp
    tr = get_estimator("tracin").fit(task)
    ref = sum(c.lr * task.gradients(xs, ys, task.checkpoint_params(c)) @
              task.gradients(task.x_train, task.y_train, task.checkpoint_params(c)).T for c in task.checkpoints)
    scores = tr.scores(tr.query_factors(xs, ys), tr.train_factors(task.x_train, task.y_train))
    assert torch.allclose(scores, ref, rtol=1e-10, atol=1e-12 * float(ref.abs().max()))
    self_ref = sum(c.lr * (task.gradients(task.x_train, task.y_train, task.checkpoint_params(c)) ** 2).sum(1)
                   for c in task.checkpoints)
    assert torch.allclose(tr.self_influence(task.x_train, task.y_train), self_ref, rtol=1e-10)
    width = tr.train_factors(task.x_train[:2], task.y_train[:2]).shape[1]
    assert width == len(task.checkpoints) * task.space.size and math.isfinite(float(scores.sum()))


def _store_of(est, task, tmp_path, chunk_rows: int) -> GradientStore:
    probe = est.train_factors(task.x_train[:1], task.y_train[:1])
    spec = StoreSpec(n=task.n_train, k=int(probe.shape[1]), dtype="float64", chunk_rows=chunk_rows,
                     fingerprint="t")
    store = GradientStore(tmp_path / f"{est.name}-{chunk_rows}", spec)
    store.fill(train_factor_fn(est, task, 7))
    return store


@pytest.mark.parametrize("method,options", [("graddot", {}), ("tracin", {}), ("exact", {}),
                                            ("cg", {"tol": 1e-10, "max_iter": 500, "self_block": 25}),
                                            ("lissa", {"depth": 60, "batch_size": None, "self_depth": 60,
                                                       "self_block": 25})])
def test_blocked_self_influence_from_a_chunked_store_is_the_diagonal(mlp, tmp_path, method, options):
    """Blocks of ``self_block`` rows gathered across 11-row chunks give the train x train diagonal."""
    task, _, _ = mlp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = compute_scores(get_estimator(method, options), task, task.x_train, task.y_train).astype(np.float64)
        est = get_estimator(method, options).fit(task)
        store = _store_of(est, task, tmp_path, chunk_rows=11)
        if "self_block" in options:
            assert self_influence_rows(est, 16) == options["self_block"]
        got = self_influence_from_store(est, task, store, 16)
    np.testing.assert_allclose(got, np.diag(full), rtol=1e-5, atol=1e-6 * np.abs(full).max())


def test_lissa_self_influence_uses_its_own_depth_and_reports_its_check(mlp):
    task, _, _ = mlp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        short = get_estimator("lissa", {"depth": 200, "batch_size": None}).fit(task)
        assert short.self_depth == 20  # depth // 10 by default
        s_short = short.self_influence(task.x_train, task.y_train)
        long = get_estimator("lissa", {"depth": 200, "batch_size": None, "self_depth": 200}).fit(task)
        s_long = long.self_influence(task.x_train, task.y_train)
    info = short.fit_info()
    assert info["self_depth"] == 20 and info["self_max_relative_change"] > long.fit_info()["self_max_relative_change"]
    g = task.gradients(task.x_train, task.y_train)
    assert torch.allclose(s_long, (long.query_factors(task.x_train, task.y_train) * g).sum(1), rtol=1e-8)
    assert not torch.allclose(s_short, s_long, rtol=1e-3)  # 20 steps really are fewer steps
    with pytest.warns(UserWarning, match="self-influence not converged.*self_depth"):
        get_estimator("lissa", {"depth": 200, "batch_size": None, "self_depth": 3}).fit(task).self_influence(
            task.x_train, task.y_train)


def test_cg_self_influence_stats_are_reported_apart_from_the_test_side(mlp):
    task, xs, ys = mlp
    est = get_estimator("cg", {"tol": 1e-8, "max_iter": 500}).fit(task)
    est.query_factors(xs, ys)
    est.self_influence(task.x_train, task.y_train, compute_train_factors(est, task, 64))
    info = est.fit_info()
    assert info["iterations"] >= 1 and "self_iterations" in info and info["self_unconverged"] == 0
