"""Z0-Inf's direction chunks and its self-influence from the stored factors change nothing."""

from __future__ import annotations

import pytest
import torch

import precompute.influence.z0inf as z0
from precompute.influence import get_estimator
from precompute.influence._toy import tiny_task
from precompute.influence.runner import compute_self_influence, compute_train_factors

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_chunked_directions_and_self_influence_from_factors(monkeypatch):
    task, _, _ = tiny_task("cnn")
    est = get_estimator("z0inf", {"directions": 20}).fit(task)
    whole = compute_train_factors(est, task, 60)
    assert est._chunk(60) >= 21  # one vmapped call over all 21 directions at the default budget
    monkeypatch.setattr(z0, "WORK_BUDGET", 4 * 60 * est.act_)  # 4 directions per call
    assert est._chunk(60) == 4
    torch.testing.assert_close(compute_train_factors(est, task, 60), whole, rtol=0, atol=0)
    x, y = task.x_train, task.y_train
    base = (est.query_factors(x, y) * est.train_factors(x, y)).sum(1)  # the estimator-wide definition
    torch.testing.assert_close(est.self_influence(x, y, whole), base, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.as_tensor(compute_self_influence(est, task, 16)), base, rtol=1e-12, atol=0)
