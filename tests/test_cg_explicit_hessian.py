"""CG with H formed once (``options.cg.hessian``): the same solution as with HVPs, and the auto rule."""

from __future__ import annotations

import numpy as np
import pytest

from precompute.errors import ConfigError
from precompute.hessian import hessian_cost
from precompute.influence import get_estimator
from precompute.influence._toy import tiny_task
from precompute.influence.cg import EXPLICIT_MAX_PARAMS
from precompute.influence.runner import compute_scores, compute_self_influence

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_explicit_and_hvp_products_both_match_exact(arch):
    task, xs, ys = tiny_task(arch)
    exact = get_estimator("exact").fit(task)
    ref = compute_scores(exact, task, xs, ys)
    ref_self = compute_self_influence(exact, task, 25)
    for mode in ("explicit", "hvp"):
        est = get_estimator("cg", {"tol": 1e-10, "max_iter": 500, "hessian": mode})
        scores = compute_scores(est, task, xs, ys)
        info = est.fit_info()
        assert info["hessian"] == mode and info["unconverged"] == 0
        np.testing.assert_allclose(scores, ref, rtol=0, atol=1e-7 * np.abs(ref).max())
        np.testing.assert_allclose(compute_self_influence(est, task, 25), ref_self, rtol=1e-7)
        assert est.fit_info()["self_unconverged"] == 0


def test_auto_forms_h_only_when_it_is_cheap():
    for arch in ("mlp", "cnn"):
        task, _, _ = tiny_task(arch)
        est = get_estimator("cg").fit(task)
        cheap = hessian_cost(task.model, task.space, task.x_train[:1]) <= task.n_train / 2
        assert est.fit_info()["hessian"] == ("explicit" if cheap and task.space.size <= EXPLICIT_MAX_PARAMS else "hvp")
    task, _, _ = tiny_task("cnn", n_train=400)  # more training rows: forming H pays off
    assert get_estimator("cg").fit(task).fit_info()["hessian"] == "explicit"
    task, _, _ = tiny_task("mlp", n_train=20)  # 20 rows: 20 / 2 HVPs are cheaper than forming H (p = 75)
    assert get_estimator("cg").fit(task).fit_info()["hessian"] == "hvp"
    with pytest.raises(ConfigError, match="influence.options.cg.hessian"):
        get_estimator("cg", {"hessian": "dense"})
