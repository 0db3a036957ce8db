"""What every registered influence method must satisfy, parametrised over the registry: a method added
as one file under precompute/influence/ is covered here without editing this file.

- sign: a test point's top proponents mostly share its label (positive score = proponent);
- self-influence equals the diagonal of the train x train score matrix, with or without reused factors;
- batch size and chunking do not change scores;
- approximations of ``exact`` agree with it within the tolerance the method declares;
- declared capabilities are honest: damping changes the scores iff declared; a method that needs
  checkpoints refuses a run without them, and one that does not works without them.

Methods that declare ``needs_evaluation`` (datamodels: fitted to an ``evaluate`` cache, scoring only
that run's test points) cannot be fitted on the tiny task: here they must refuse it with a one-line
error; their properties (sign, recovery, held-out fit) are tested in tests/test_seed_methods.py.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from cache_format.metrics import mean_spearman
from precompute.errors import MethodError
from precompute.influence import InfluenceTask, available_methods, estimator_class, get_estimator
from precompute.influence._toy import tiny_task
from precompute.influence.runner import (
    compute_scores,
    compute_self_influence,
    compute_train_factors,
)

ALL_METHODS = available_methods()
#: the methods the tiny-task contract below applies to
METHODS = [m for m in ALL_METHODS if not estimator_class(m).capabilities.needs_evaluation]
EVALUATION_FITTED = [m for m in ALL_METHODS if m not in METHODS]
APPROXIMATIONS = [m for m in METHODS if estimator_class(m).capabilities.exact_spearman is not None
                  or estimator_class(m).capabilities.exact_rtol is not None]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mlp():
    return tiny_task("mlp", damping=0.1)


@pytest.fixture(scope="module")
def exact_scores(mlp):
    task, xs, ys = mlp
    return compute_scores(get_estimator("exact"), task, xs, ys)


def quick(method: str) -> dict:
    return dict(estimator_class(method).quick_options)


def scores_of(method: str, task: InfluenceTask, xs, ys, options: dict | None = None, **kw) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LiSSA's "not converged" warning at quick settings
        return compute_scores(get_estimator(method, quick(method) if options is None else options), task, xs, ys, **kw)


def test_the_registry_finds_every_method_module():
    assert len(METHODS) >= 12 and {"exact", "graddot", "tracin", "ekfac", "trak"} <= set(METHODS)
    for m in ALL_METHODS:
        cls = estimator_class(m)
        assert cls.name == m and cls.summary and cls.__doc__, m
        assert get_estimator(m, quick(m)).config.to_dict()["damping"] is None  # the run's damping by default


@pytest.mark.parametrize("method", METHODS)
def test_sign_top_proponents_share_the_label(mlp, method):
    task, xs, ys = mlp
    s = scores_of(method, task, xs, ys)
    y_tr, y_te = task.y_train.numpy(), ys.numpy()
    same = y_tr[None, :] == y_te[:, None]  # [n_test, n_train]
    gap = np.array([s[t][same[t]].mean() - s[t][~same[t]].mean() for t in range(len(s))])
    assert (gap > 0).mean() >= 0.8  # same-label samples score higher on average
    top5 = np.argsort(-s, axis=1)[:, :5]
    assert same[np.arange(len(s))[:, None], top5].mean() >= 0.5  # chance is 1/3


@pytest.mark.parametrize("method", METHODS)
def test_self_influence_is_the_diagonal(mlp, method):
    task, _, _ = mlp
    full = scores_of(method, task, task.x_train, task.y_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        self_inf = compute_self_influence(get_estimator(method, quick(method)).fit(task), task, 16)
        again = get_estimator(method, quick(method)).fit(task)  # fresh: CG recycles across calls
        reused = compute_self_influence(again, task, 16, compute_train_factors(again, task, 512))  # the pipeline's path
    np.testing.assert_allclose(self_inf, np.diag(full), rtol=1e-5, atol=1e-6 * np.abs(full).max())
    np.testing.assert_allclose(reused, self_inf, rtol=1e-10, atol=1e-12 * np.abs(full).max())


@pytest.mark.parametrize("method", METHODS)
def test_batch_size_and_chunking_do_not_change_scores(mlp, method):
    task, xs, ys = mlp
    ref = scores_of(method, task, xs, ys, train_batch_size=512, test_batch_size=256)
    other = dataclasses.replace(task, batch_size=7)
    chunked = scores_of(method, other, xs, ys, train_batch_size=9, test_batch_size=4)
    np.testing.assert_allclose(chunked, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("method", APPROXIMATIONS)
def test_agrees_with_exact_within_its_declared_tolerance(mlp, exact_scores, method):
    task, xs, ys = mlp
    caps = estimator_class(method).capabilities
    s = scores_of(method, task, xs, ys)
    if caps.exact_spearman is not None:
        assert mean_spearman(s, exact_scores) >= caps.exact_spearman
    if caps.exact_rtol is not None:
        np.testing.assert_allclose(s, exact_scores, rtol=caps.exact_rtol,
                                   atol=caps.exact_rtol * np.abs(exact_scores).max())


@pytest.mark.parametrize("method", METHODS)
def test_declared_damping_is_the_only_damping(mlp, method):
    task, xs, ys = mlp
    low = scores_of(method, dataclasses.replace(task, damping=0.05), xs, ys)
    high = scores_of(method, dataclasses.replace(task, damping=0.5), xs, ys)
    if estimator_class(method).capabilities.damping is None:
        np.testing.assert_array_equal(low, high)
    else:
        assert not np.allclose(low, high, rtol=1e-3, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_declared_checkpoint_need(mlp, method):
    task, xs, ys = mlp
    bare = dataclasses.replace(task, checkpoints=[])
    if estimator_class(method).capabilities.needs_checkpoints:
        with pytest.raises(MethodError, match="checkpoint"):
            scores_of(method, bare, xs, ys)
    else:
        assert np.isfinite(scores_of(method, bare, xs, ys)).all()


@pytest.mark.parametrize("method", EVALUATION_FITTED)
def test_evaluation_fitted_methods_refuse_a_task_without_an_evaluate_cache(mlp, method, tmp_path):
    task, xs, ys = mlp
    for options in ({}, {"run": str(tmp_path)}):
        with pytest.raises(MethodError, match=f"{method}: .*(evaluate|precompute)") as err:
            scores_of(method, task, xs, ys, options)
        assert "\n" not in str(err.value)
