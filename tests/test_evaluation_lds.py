"""LDS evaluation: the metric itself, its ground-truth cache, damping sensitivity and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import QUIET, copy_run

from precompute.evaluation import (
    AgreementSettings,
    BrittlenessSettings,
    DampingSettings,
    EvalSettings,
    LDSSettings,
    LOOSettings,
    evaluate_run,
)
from precompute.evaluation.lds import lds, subset_masks


def only_lds(subsets: int = 30, methods=("exact",), workers: int = 1, **kw) -> EvalSettings:
    return EvalSettings(methods=list(methods), workers=workers, lds=LDSSettings(subsets=subsets, bootstrap=200),
                        loo=LOOSettings(enabled=False), brittleness=BrittlenessSettings(enabled=False),
                        damping=DampingSettings(enabled=False), agreement=AgreementSettings(enabled=False), **kw)


@pytest.fixture(scope="module")
def lds_run(logreg_run, tmp_path_factory):
    run = copy_run(logreg_run, tmp_path_factory.mktemp("lds"))
    res = evaluate_run(run, only_lds(), **QUIET)
    return run, res


def _groundtruth(run: Path):
    meta = json.loads((run / "evaluation" / "results.json").read_text())
    d = run / "evaluation" / "groundtruth" / f"lds-{meta['lds']['key']}"
    return np.load(d / "masks.npy"), np.load(d / "test_loss.npy")


def test_lds_metric_on_a_synthetic_linear_datamodel():
    rng = np.random.default_rng(0)
    n_test, n_train, S = 40, 200, 60
    w = rng.normal(size=(n_test, n_train))
    masks = subset_masks(n_train, 0.5, seed=1, start=0, stop=S)
    loss = -(masks @ w.T) + 0.1 * rng.normal(size=(S, n_test))  # training on proponents lowers the loss
    assert lds(w, masks, -loss)["lds"] > 0.95
    assert lds(-w, masks, -loss)["lds"] < -0.95
    assert abs(lds(rng.normal(size=w.shape), masks, -loss)["lds"]) < 0.1
    # subsets are a deterministic function of (seed, index): a larger S extends a smaller one
    assert (subset_masks(n_train, 0.5, 1, 0, 10) == masks[:10]).all()
    assert masks.sum(1).tolist() == [100] * S


def test_exact_scores_high_lds_negated_negative_random_near_zero(lds_run):
    """Tiny convex problem (softmax regression on digits): exact influence predicts retraining."""
    run, res = lds_run
    masks, test_loss = _groundtruth(run)
    assert masks.shape == (30, 1437) and test_loss.shape == (30, 1, 360)
    exact = np.load(run / "methods" / "exact" / "scores.npy")
    target = -test_loss.mean(1)
    assert res.results["lds"]["methods"]["exact"]["lds"] > 0.9
    assert lds(exact, masks, target)["lds"] > 0.9
    assert lds(-exact, masks, target)["lds"] < 0
    random = np.random.default_rng(0).normal(size=exact.shape)
    assert abs(lds(random, masks, target)["lds"]) < 0.1
    lo, hi = res.results["lds"]["methods"]["exact"]["ci"]
    assert lo <= res.results["lds"]["methods"]["exact"]["lds"] <= hi


def test_ground_truth_is_reused_for_a_new_method_and_extended_for_more_subsets(lds_run):
    run, _ = lds_run
    again = evaluate_run(run, only_lds(methods=("graddot",)), **QUIET)
    assert again.retrained == 0
    methods = again.results["lds"]["methods"]
    assert set(methods) >= {"exact", "graddot"}  # the earlier method's result is kept
    assert methods["exact"]["lds"] > methods["graddot"]["lds"]
    more = evaluate_run(run, only_lds(subsets=33, methods=("exact",)), **QUIET)
    assert more.retrained == 3  # only the 3 new subsets
    masks, _ = _groundtruth(run)
    assert len(masks) == 33
    leftovers = [p.name for p in (run / "evaluation").rglob(".*")]
    assert leftovers == []  # no temp files or folders left behind


def test_a_method_the_run_lacks_is_computed_and_scored_without_retraining(lds_run):
    run, _ = lds_run
    res = evaluate_run(run, only_lds(methods=("exact", "cg")), **QUIET)
    assert res.retrained == 0
    methods = res.results["lds"]["methods"]
    assert abs(methods["cg"]["lds"] - methods["exact"]["lds"]) <= 0.02
    assert len(list((run / "evaluation" / "scores").glob("cg-*.npy"))) == 1  # kept for later calls
    assert res.results["computed_seconds"]["cg"] > 0


def test_ground_truth_for_another_model_is_not_used(lds_run):
    from precompute.evaluation.store import EvaluationStore

    run, _ = lds_run
    meta = json.loads((run / "evaluation" / "results.json").read_text())
    key = meta["lds"]["key"]
    same = EvaluationStore(run, meta["model_fingerprint"], meta["dataset_fingerprint"])
    other = EvaluationStore(run, "0" * 16, meta["dataset_fingerprint"])
    assert same.load_groundtruth("lds", key) is not None
    assert other.load_groundtruth("lds", key) is None
    assert other.load_results().get("lds") is None  # results of another model are ignored too


def test_process_pool_gives_the_same_ground_truth(lds_run, tmp_path):
    run, _ = lds_run
    fresh = copy_run(run, tmp_path)
    res = evaluate_run(fresh, only_lds(subsets=4, workers=2), **QUIET)
    assert res.retrained == 4
    m_pool, l_pool = _groundtruth(fresh)
    m_ser, l_ser = _groundtruth(run)
    assert (m_pool == m_ser[:4]).all()
    np.testing.assert_allclose(l_pool, l_ser[:4], rtol=1e-6, atol=1e-8)


def test_damping_sensitivity_records_best_value_and_precompute_uses_it(lds_run):
    from precompute.cli import build_parser
    from precompute.config import load_config
    from precompute.influence.from_eval import apply_damping_from_eval
    from sample_data import sample_config_path

    run, _ = lds_run
    s = only_lds(methods=("exact",))
    s.damping = DampingSettings(grid=[1e-4, 1.0, 100.0], tests=40)
    res = evaluate_run(run, s, **QUIET)
    assert res.retrained == 0  # damping reuses the LDS ground truth
    d = res.results["damping"]["methods"]["exact"]
    assert d["grid"] == [0.0, 1e-4, 1.0, 100.0]  # the run's own value (0) is added
    lds_by = dict(zip(d["grid"], d["lds"], strict=True))
    assert lds_by[1e-4] > 0.9 and lds_by[100.0] < lds_by[1e-4]
    assert d["best"] in (0.0, 1e-4)

    cfg = load_config(sample_config_path("digits-logreg"))
    cfg.influence.damping = "from-eval"
    apply_damping_from_eval(cfg, run.parent)
    assert cfg.influence.damping == d["best"]
    assert cfg.influence.options["exact"]["damping"] == d["best"]
    assert build_parser().parse_args(["precompute", "--damping", "from-eval"]).damping == "from-eval"


def test_from_eval_without_results_is_a_one_line_error(tmp_path, capsys):
    from precompute.cli import main

    rc = main(["precompute", "--sample", "digits-logreg", "--cache-dir", str(tmp_path), "--damping", "from-eval"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: influence.damping") and "evaluate" in err and "\n" not in err
    assert not any(tmp_path.iterdir())


def test_cli_errors_are_one_line(tmp_path, capsys, lds_run):
    from precompute.cli import main

    rc = main(["evaluate", "no-such-run", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "no-such-run" in err and "\n" not in err
    run, _ = lds_run
    rc = main(["evaluate", str(run), "--lds-subsets", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "lds.subsets" in err and "--lds-subsets" in err and "\n" not in err
    rc = main(["evaluate", str(run), "--methods", "nope", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nope" in err and "\n" not in err


def test_rebuilding_a_run_with_overwrite_keeps_its_ground_truth(lds_run, tmp_path):
    """--overwrite with another method list: the retrained models survive, the old results do not."""
    from precompute.config import apply_overrides, load_config
    from precompute.pipeline import run_precompute
    from sample_data import sample_config_path

    run = tmp_path / lds_run[0].name
    shutil.copytree(lds_run[0], run)  # with its evaluation/ (copy_run leaves that out)
    assert (run / "evaluation" / "results.json").exists()
    cfg = apply_overrides(load_config(sample_config_path("digits-logreg")),
                          {"mislabels.enabled": False, "influence.methods": ["exact", "gradcos"]})
    cfg.name = run.name
    from helpers import build_threads

    with build_threads():  # the same thread count as the session's build: the same model bits
        run_precompute(cfg, cache_dir=run.parent, overwrite=True, progress=False, log=lambda _m: None)
    assert json.loads((run / "manifest.json").read_text())["config"]["influence"]["methods"] == ["exact", "gradcos"]
    assert not (run / "evaluation" / "results.json").exists()  # it scored the replaced run
    res = evaluate_run(run, only_lds(methods=("exact", "gradcos")), **QUIET)
    assert res.retrained == 0
    assert res.results["lds"]["methods"]["exact"]["lds"] == pytest.approx(lds_run[1].results["lds"]["methods"]["exact"]["lds"])
