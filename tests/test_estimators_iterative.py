"""CG, LiSSA and Arnoldi against the exact estimator on a tiny float64 MLP (p = 75), plus damping "auto".

Tolerances (per-test-point Spearman vs exact, mean over test points): CG >= 0.99, full-rank Arnoldi
>= 0.99, converged LiSSA >= 0.95 (see docs/methods.md).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cache_format.metrics import mean_spearman
from precompute.config import InfluenceConfig
from precompute.errors import ConfigError, MethodError
from precompute.influence import get_estimator
from precompute.influence._toy import tiny_task
from precompute.influence.base import auto_damping
from precompute.influence.cg import batched_cg, block_cg
from precompute.influence.runner import compute_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mlp():
    task, xs, ys = tiny_task("mlp", damping=0.1)
    exact = get_estimator("exact").fit(task)
    return task, xs, ys, exact, compute_scores(exact, task, xs, ys)


@pytest.mark.parametrize("block", [True, False])
def test_cg_matches_exact(mlp, block):
    task, xs, ys, exact, ref = mlp
    est = get_estimator("cg", {"tol": 1e-8, "max_iter": 500, "block": block})
    scores = compute_scores(est, task, xs, ys)
    assert mean_spearman(ref, scores) >= 0.99
    assert np.abs(scores - ref).max() <= 1e-4 * np.abs(ref).max()
    assert est.fit_info()["unconverged"] == 0


def test_block_cg_solves_a_dense_system_in_fewer_steps():
    """A [p, p] with a few large eigenvalues and a flat bulk: the block of 12 right-hand sides deflates
    the large ones, so block CG needs fewer steps than independent CG for the same tolerance."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(80, 80, generator=gen, dtype=torch.float64))
    eig = torch.cat([torch.logspace(3, 1, 10, dtype=torch.float64), torch.linspace(0.1, 0.5, 70, dtype=torch.float64)])
    a = q @ torch.diag(eig) @ q.T
    b = torch.randn(12, 80, generator=gen, dtype=torch.float64)
    x_ref = torch.linalg.solve(a, b.T).T
    x_block, st_block = block_cg(lambda v: v @ a, b, 1e-10, 200)
    x_plain, st_plain = batched_cg(lambda v: v @ a, b, 1e-10, 200)
    for x in (x_block, x_plain):
        assert torch.allclose(x, x_ref, rtol=1e-7, atol=1e-9)
    assert st_block["iterations"] < st_plain["iterations"]
    assert st_block["unconverged"] == 0 and st_block["max_relative_residual"] <= 1e-10
    # duplicated and zero right-hand sides (a rank-deficient block) are fine
    b2 = torch.cat([b[:3], b[:3], torch.zeros(1, 80, dtype=torch.float64)])
    x2, _ = block_cg(lambda v: v @ a, b2, 1e-10, 200)
    assert torch.allclose(x2, torch.cat([x_ref[:3], x_ref[:3], torch.zeros(1, 80, dtype=torch.float64)]),
                          rtol=1e-7, atol=1e-9)


def test_recycled_directions_start_a_later_batch_closer():
    """Block CG from the Galerkin solution in an earlier batch's directions: same answer, fewer steps."""
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(80, 80, generator=gen, dtype=torch.float64))
    eig = torch.cat([torch.logspace(3, 1, 10, dtype=torch.float64), torch.linspace(0.1, 0.5, 70, dtype=torch.float64)])
    a = q @ torch.diag(eig) @ q.T
    first, later = torch.randn(2, 12, 80, generator=gen, dtype=torch.float64)
    keep: list = []
    block_cg(lambda v: v @ a, first, 1e-10, 200, keep=keep)
    w, aw = torch.cat([k[0] for k in keep], 1), torch.cat([k[1] for k in keep], 1)
    assert torch.allclose(aw, a @ w)  # what was kept is (S, A S)
    coef = torch.linalg.pinv(w.T @ aw) @ (w.T @ later.T)
    start = ((w @ coef).T, later - (aw @ coef).T)
    x_cold, cold = block_cg(lambda v: v @ a, later, 1e-10, 200)
    x_warm, warm = block_cg(lambda v: v @ a, later, 1e-10, 200, start=start)
    x_ref = torch.linalg.solve(a, later.T).T
    assert torch.allclose(x_warm, x_ref, rtol=1e-7, atol=1e-9) and torch.allclose(x_cold, x_ref, rtol=1e-7, atol=1e-9)
    assert warm["iterations"] < cold["iterations"]


@pytest.mark.parametrize("recycle_mb", [256, 0])
def test_cg_over_many_test_batches_matches_exact(mlp, recycle_mb):
    task, xs, ys, exact, ref = mlp
    est = get_estimator("cg", {"tol": 1e-8, "max_iter": 500, "recycle_mb": recycle_mb})
    scores = compute_scores(est, task, xs, ys, test_batch_size=4)  # 4 batches; later ones start recycled
    assert np.abs(scores - ref).max() <= 1e-4 * np.abs(ref).max()
    assert (est.fit_info()["recycled_directions"] > 0) == (recycle_mb > 0)


@pytest.mark.parametrize("block", [True, False])
def test_cg_unconverged_warns(mlp, block):
    task, xs, ys, *_ = mlp
    with pytest.warns(UserWarning, match="max_iter"):
        compute_scores(get_estimator("cg", {"tol": 1e-12, "max_iter": 2, "block": block}), task, xs, ys)


@pytest.mark.parametrize("residual", ["damping", "drop"])
def test_full_rank_arnoldi_matches_exact(mlp, residual):
    task, xs, ys, exact, ref = mlp
    p = task.space.size
    est = get_estimator("arnoldi", {"n_iter": p, "rank": p, "residual": residual})
    scores = compute_scores(est, task, xs, ys)
    assert mean_spearman(ref, scores) >= 0.99
    assert np.abs(scores - ref).max() <= 1e-4 * np.abs(ref).max()


def test_arnoldi_top_eigenvalues_match_exact(mlp):
    task, _, _, exact, _ = mlp
    est = get_estimator("arnoldi", {"n_iter": 40, "rank": 5}).fit(task)
    top = exact.eigenvalues_.abs().sort(descending=True).values[:5]
    assert torch.allclose(est.eigenvalues_.abs().sort(descending=True).values, top, rtol=1e-6)


def test_lissa_converged_matches_exact(mlp):
    task, xs, ys, exact, ref = mlp
    det = compute_scores(get_estimator("lissa", {"depth": 250, "batch_size": None}), task, xs, ys)
    assert mean_spearman(ref, det) >= 0.99  # full-batch Neumann series, converged
    with warnings.catch_warnings():  # mini-batch noise keeps the iterate moving: it warns, by design
        warnings.simplefilter("ignore")
        est = get_estimator("lissa", {"depth": 200, "batch_size": 30, "repeats": 3})
        stoch = compute_scores(est, task, xs, ys)
    assert mean_spearman(ref, stoch) >= 0.95


def test_lissa_divergence_is_reported(mlp):
    task, xs, ys, *_ = mlp
    est = get_estimator("lissa", {"depth": 200, "scale": 0.05, "batch_size": None}).fit(task)
    with pytest.raises(MethodError, match="diverged.*raise influence.options.lissa.scale"):
        est.query_factors(xs, ys)


def test_lissa_unconverged_warns(mlp):
    task, xs, ys, *_ = mlp
    est = get_estimator("lissa", {"depth": 5, "batch_size": None}).fit(task)
    with pytest.warns(UserWarning, match="not converged"):
        est.query_factors(xs, ys)


def test_auto_damping_is_a_tenth_of_the_mean_eigenvalue_or_twice_the_negative_one(mlp):
    """Hessian methods: ``max(0.1 tr(H) / p, 2 |lambda_min(H)|)`` (K-FAC/DataInf damp per layer instead:
    tests/test_damping_auto.py)."""
    task, *_ = mlp
    task_auto, _, _ = tiny_task("mlp", damping="auto")
    exact = get_estimator("exact").fit(task)
    h = exact.hessian_
    rule = max(0.1 * float(h.trace()) / task.space.size, 2 * max(0.0, -float(torch.linalg.eigvalsh(h).min())))
    lam = auto_damping(task_auto)
    assert abs(lam - rule) <= 0.25 * rule  # Hutchinson estimate with 32 probes, 60 Lanczos steps
    ests = [get_estimator(m) for m in ("exact", "cg", "lissa", "arnoldi")]
    assert {e.damping_for(task_auto) for e in ests} == {lam}  # one value shared by the run's Hessian methods
    assert get_estimator("cg", {"damping": 0.5}).damping_for(task_auto) == 0.5


def test_damping_validation():
    with pytest.raises(ConfigError, match="damping"):
        get_estimator("cg", {"damping": "big"})
    with pytest.raises(ConfigError, match="damping"):
        get_estimator("cg", {"damping": -1.0})
    with pytest.raises(ConfigError, match="tol"):
        get_estimator("cg", {"tol": 2.0})
    with pytest.raises(ConfigError, match="rank"):
        get_estimator("arnoldi", {"n_iter": 5, "rank": 10})
    InfluenceConfig(damping="auto").validate()
    with pytest.raises(ConfigError, match="influence.damping"):
        InfluenceConfig(damping="fast").validate()


@pytest.mark.parametrize("block", [True, False])
def test_cg_rejects_indefinite_system(block):
    task, xs, ys = tiny_task("mlp", damping=0.0, weight_decay=0.0)
    exact_min = get_estimator("exact", {"damping": 1.0}).fit(task).eigenvalues_.min().item()
    assert exact_min < 0  # this model's Hessian is indefinite without weight decay
    est = get_estimator("cg", {"max_iter": 200, "block": block}).fit(task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MethodError, match="raise influence.damping"):
            est.query_factors(task.x_train, task.y_train)
