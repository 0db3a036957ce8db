"""LiSSA's default ("auto") depth and batch size: a work budget per query, checked against the exact
estimator on the tiny float64 MLP (p = 75) and by hand-counted multiply-adds."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cache_format.metrics import mean_spearman
from precompute.errors import ConfigError
from precompute.influence import get_estimator, lissa
from precompute.influence._toy import tiny_task
from precompute.influence.lissa import auto_depth_batch, forward_macs, sample_cost
from precompute.influence.runner import compute_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mlp():
    task, xs, ys = tiny_task("mlp", damping=0.1)
    exact = get_estimator("exact").fit(task)
    return task, xs, ys, compute_scores(exact, task, xs, ys)


def test_forward_macs_counts_weights_per_output_position(monkeypatch):
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 2, stride=2), nn.Flatten(),
                        nn.Linear(18, 3))
    # Conv2d(1, 2, 3, padding=1) on 6x6: 18 weights x 36 positions; Conv2d(2, 2, 2, stride=2): 16 x 9;
    # Linear(18, 3): 54
    assert forward_macs(cnn, torch.zeros(1, 1, 6, 6)) == 18 * 36 + 16 * 9 + 54
    mlp = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3))
    assert forward_macs(mlp, torch.zeros(1, 8)) == 8 * 6 + 6 * 3
    assert sample_cost(mlp, torch.zeros(1, 8)) == lissa.MIN_SAMPLE_COST  # tiny models: the overhead floor
    monkeypatch.setattr(lissa, "MIN_SAMPLE_COST", 0)
    assert sample_cost(mlp, torch.zeros(1, 8)) == 75  # at least the parameter count (biases)
    assert forward_macs(nn.Identity(), torch.zeros(1, 8)) == 0


def test_auto_rule_shrinks_batch_first_then_depth_and_keeps_explicit_values():
    budget = lissa.QUERY_WORK_BUDGET
    assert auto_depth_batch("auto", "auto", 10, 10_000) == (1000, 256)  # cheap model: the old defaults
    assert auto_depth_batch("auto", "auto", 10, 100) == (1000, 100)  # batch at most n
    cost = int(budget / (1000 * 100))  # budget allows 100 samples per step at depth 1000
    assert auto_depth_batch("auto", "auto", cost, 10_000) == (1000, 100)
    cost = int(budget / (32 * 200))  # below batch 32 the depth gives way: 200 steps of 32
    assert auto_depth_batch("auto", "auto", cost, 10_000) == (200, 32)
    assert auto_depth_batch("auto", "auto", int(budget), 10_000) == (50, 32)  # floors
    assert auto_depth_batch(300, "auto", cost, 10_000) == (300, 32)  # explicit depth kept
    assert auto_depth_batch("auto", 64, cost, 10_000) == (100, 64)  # explicit batch kept, depth from budget
    assert auto_depth_batch("auto", None, cost, 400) == (50, 400)  # None = the full training set
    assert auto_depth_batch(7, 5, int(budget), 10_000) == (7, 5)
    with pytest.raises(ConfigError, match="lissa.depth"):
        get_estimator("lissa", {"depth": "deep"})
    with pytest.raises(ConfigError, match="lissa.batch_size"):
        get_estimator("lissa", {"batch_size": 0})


def test_lissa_auto_depth_matches_exact_and_reports_the_resolved_settings(mlp, monkeypatch):
    task, xs, ys, ref = mlp
    info = get_estimator("lissa").fit(task).fit_info()  # tiny model: depth 1000, batch = all 60 samples
    cost = lissa.MIN_SAMPLE_COST
    assert (info["depth"], info["batch_size"], info["self_depth"], info["cost_per_sample"]) == (1000, 60, 100, cost)
    monkeypatch.setattr(lissa, "QUERY_WORK_BUDGET", cost * 60 * 250)  # full batch: the budget buys 250 steps
    est = get_estimator("lissa", {"batch_size": None})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = compute_scores(est, task, xs, ys)
        est.self_influence(task.x_train[:20], task.y_train[:20])
    info = est.fit_info()
    assert (info["depth"], info["batch_size"], info["self_depth"]) == (250, 60, 25)
    assert mean_spearman(ref, scores) >= 0.99  # converged (tests/test_estimators_iterative.py: depth 250)
    assert 0 <= info["max_relative_change"] <= 1e-2 and info["self_max_relative_change"] > 0


def test_lissa_within_a_small_budget_still_tracks_exact(mlp, monkeypatch):
    """A model 'too costly' for the defaults: the rule picks mini-batches of 32 and 200 steps, and the
    stochastic series still ranks like exact; the convergence checks are reported."""
    task, xs, ys, ref = mlp
    monkeypatch.setattr(lissa, "QUERY_WORK_BUDGET", lissa.MIN_SAMPLE_COST * 32 * 200)
    est = get_estimator("lissa", {"repeats": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = compute_scores(est, task, xs, ys)
    info = est.fit_info()
    assert (info["depth"], info["batch_size"], info["self_depth"]) == (200, 32, 20)
    assert mean_spearman(ref, scores) >= 0.9
    assert info["max_relative_change"] > 0
