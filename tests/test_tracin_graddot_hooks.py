"""TracIn, grad-dot and grad-cos on the hook-path per-sample gradients against the slow autograd loop at
each checkpoint (tiny float64 models): factors block by block, scores and self-influence."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from precompute.gradients import per_sample_gradients_loop
from precompute.hooked_gradients import hook_plan
from precompute.influence import get_estimator
from precompute.influence._toy import tiny_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def task_and_test(request):
    return tiny_task(request.param, n_train=23, n_test=7, epochs=5)


def _loop_at(task, params, x, y) -> torch.Tensor:
    """``[b, p]`` per-sample gradients at ``params`` by one autograd backward per sample."""
    model = copy.deepcopy(task.model)
    model.load_state_dict({**model.state_dict(), **params})
    return per_sample_gradients_loop(model, x, y, task.space)


def test_tracin_factors_are_the_scaled_loop_gradients_per_checkpoint(task_and_test):
    task, xs, ys = task_and_test
    assert hook_plan(task.model, task.space) is not None
    tr = get_estimator("tracin").fit(task)
    k = task.space.size
    q, t = tr.query_factors(xs, ys), tr.train_factors(task.x_train, task.y_train)
    assert q.shape == (len(xs), len(task.checkpoints) * k)
    ref = 0
    for i, c in enumerate(task.checkpoints):
        params = task.checkpoint_params(c)
        gq, gt = _loop_at(task, params, xs, ys), _loop_at(task, params, task.x_train, task.y_train)
        assert (q[:, i * k:(i + 1) * k] - math.sqrt(c.lr) * gq).abs().max() <= 1e-10
        assert (t[:, i * k:(i + 1) * k] - math.sqrt(c.lr) * gt).abs().max() <= 1e-10
        ref = ref + c.lr * gq @ gt.T
    scores = tr.scores(q, t)
    assert (scores - ref).abs().max() <= 1e-10 * max(1.0, float(ref.abs().max()))
    assert torch.allclose(tr.self_influence(task.x_train, task.y_train, t), (t * t).sum(1), rtol=1e-12)


def test_graddot_and_gradcos_match_the_loop(task_and_test):
    task, xs, ys = task_and_test
    gq = per_sample_gradients_loop(task.model, xs, ys, task.space)
    gt = per_sample_gradients_loop(task.model, task.x_train, task.y_train, task.space)
    dot = get_estimator("graddot").fit(task)
    got = dot.scores(dot.query_factors(xs, ys), dot.train_factors(task.x_train, task.y_train))
    assert (got - gq @ gt.T).abs().max() <= 1e-10 * max(1.0, float((gq @ gt.T).abs().max()))
    cos = get_estimator("gradcos").fit(task)
    ref = (gq / gq.norm(dim=1, keepdim=True)) @ (gt / gt.norm(dim=1, keepdim=True)).T
    got = cos.scores(cos.query_factors(xs, ys), cos.train_factors(task.x_train, task.y_train))
    assert (got - ref).abs().max() <= 1e-10
    assert torch.allclose(cos.self_influence(task.x_train, task.y_train), torch.ones(task.n_train, dtype=got.dtype))
