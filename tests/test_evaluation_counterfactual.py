"""Counterfactual evaluation on the convex digits-logreg run: brittleness (top-k removal) and leave-one-out."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import QUIET, copy_run

from cache_format.evaluation import counterfactual_sentence, load_trust
from precompute.evaluation import (
    AgreementSettings,
    BrittlenessSettings,
    DampingSettings,
    EvalSettings,
    LDSSettings,
    LOOSettings,
    evaluate_run,
)


@pytest.fixture(scope="module")
def cf_run(logreg_run, tmp_path_factory):
    run = copy_run(logreg_run, tmp_path_factory.mktemp("cf"))
    settings = EvalSettings(
        methods=["exact", "graddot"], workers=1,
        lds=LDSSettings(enabled=False), damping=DampingSettings(enabled=False),
        loo=LOOSettings(points=12),
        brittleness=BrittlenessSettings(tests=5, k=[10, 40], random=3, select="low-margin", methods=["exact"]),
        agreement=AgreementSettings(k=10),
    )
    return run, evaluate_run(run, settings, **QUIET)


def test_removing_top_proponents_flips_more_than_random_removal(cf_run):
    _, res = cf_run
    b = res.results["brittleness"]
    assert b["k"] == [10, 40] and len(b["tests"]) == 5
    exact = np.array(b["methods"]["exact"]["flip_rate"])
    rand = np.array(b["random"]["flip_rate"])
    assert exact.sum() > rand.sum()
    assert exact[-1] > rand[-1]
    assert exact[-1] >= exact[0]  # removing more proponents flips at least as many


def test_leave_one_out_matches_exact_influence_on_a_convex_model(cf_run):
    _, res = cf_run
    loo = res.results["loo"]
    assert loo["convex"] and loo["meaningful"]
    assert loo["methods"]["exact"]["pearson"] > 0.95
    assert loo["methods"]["exact"]["pearson_pooled"] > 0.95
    assert loo["methods"]["exact"]["pearson"] > loo["methods"]["graddot"]["pearson"]
    assert 0.5 < loo["methods"]["exact"]["slope"] < 1.5  # predicted change has the right sign and scale


def test_agreement_is_symmetric_with_unit_diagonal(cf_run):
    _, res = cf_run
    ag = res.results["agreement"]
    rho = np.array(ag["spearman"])
    assert ag["methods"] == ["exact", "graddot"]
    np.testing.assert_allclose(rho, rho.T)
    np.testing.assert_allclose(np.diag(rho), 1.0)
    assert 0.0 <= ag["topk_overlap"][0][1] <= 1.0


def test_counterfactual_sentence_for_tested_and_untested_points(cf_run):
    run, res = cf_run
    b = res.results["brittleness"]
    tr = load_trust(run)
    flipped_tests = [t for t, f in zip(b["tests"], b["methods"]["exact"]["flipped"], strict=True) if any(f)]
    assert flipped_tests, "some low-margin test point should flip"
    t = flipped_tests[0]
    s = counterfactual_sentence(run, t)
    cf = tr.counterfactual(t)
    assert s.startswith(f"Removing its top {cf['k']} proponents (exact) flipped the prediction from ")
    assert f"removing {cf['k']} random training samples flipped it in " in s and "of 3 tries" in s
    untested = next(i for i in range(360) if i not in b["tests"])
    assert counterfactual_sentence(run, untested) is None
