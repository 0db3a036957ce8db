"""Mislabel rankings: the scoring pieces, the cached stage on the noisy sample, and --labels-override."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cache_format.mislabels import (
    detection_curve,
    detection_report,
    found_at,
    load_mislabels,
    random_baseline,
    ranking_order,
)
from cache_format.runs import RunCache
from explorer.annotations import AnnotationStore, db_path
from precompute.cli import main
from precompute.mislabels.oof import fold_assignment
from precompute.mislabels.ranking import (
    cleanlab_scores,
    neighbour_vote,
    oga_scores,
    suggested_labels,
    train_topk,
)


# ------------------------------------------------------------------------------------ pieces
def test_detection_metrics_on_known_rankings():
    flipped = np.zeros(100, bool)
    flipped[:10] = True
    perfect = -np.arange(100, dtype=float)
    rep = detection_report(perfect, flipped)
    assert rep["roc_auc"] == 1.0 and rep["found@10%"] == 1.0 and rep["found@5%"] == 0.5
    worst = np.arange(100, dtype=float)
    assert detection_report(worst, flipped)["roc_auc"] == 0.0
    x, y = detection_curve(perfect, flipped)
    assert x[0] == 0 and y[0] == 0 and y[10] == 1.0 and len(x) == 101
    assert random_baseline()["found@20%"] == 0.2
    assert found_at(np.zeros(100), flipped)["found@10%"] == 1.0  # ties broken by index (deterministic)
    assert ranking_order(np.array([0.1, 0.5, 0.5]))[:2].tolist() == [1, 2]


def test_oga_flags_planted_gradient_outliers():
    rng = np.random.default_rng(0)
    g = rng.normal(0, 0.1, (300, 20))
    g[:15] += rng.normal(0, 3.0, (15, 20))
    for det in ("isolation_forest", "lof"):
        assert detection_report(oga_scores(g, det), np.arange(300) < 15)["roc_auc"] > 0.95
    with pytest.raises(ValueError, match="mislabels.detector"):
        oga_scores(g, "svm")


def test_cleanlab_scores_rank_contradicted_labels_first():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    probs = np.full((200, 3), 0.05)
    probs[np.arange(200), y] = 0.9
    given = y.copy()
    given[:10] = (y[:10] + 1) % 3
    s, issues = cleanlab_scores(given, probs)
    assert set(np.argsort(-s)[:10]) == set(range(10))
    assert issues[:10].all() and not issues[10:].any()


def test_train_topk_matches_brute_force_and_excludes_self():
    rng = np.random.default_rng(2)
    g = rng.normal(size=(57, 6)).astype(np.float32)
    pro, pro_s, opp, opp_s = train_topk(g, 5, chunk=10)
    k = g @ g.T
    np.fill_diagonal(k, np.nan)
    for i in range(57):
        row = np.where(np.isnan(k[i]), -np.inf, k[i])
        assert pro[i].tolist() == np.argsort(-row, kind="stable")[:5].tolist()
        assert i not in pro[i] and i not in opp[i]
        np.testing.assert_allclose(opp_s[i], np.sort(np.where(np.isnan(k[i]), np.inf, k[i]))[:5], rtol=1e-5)
    assert (np.diff(pro_s, axis=1) <= 1e-6).all()


def test_neighbour_vote_and_suggestion():
    f = np.array([[1, 0], [0.9, 0.1], [0.95, 0.05], [0.97, 0.02], [0, 1], [0.1, 0.9], [0.05, 0.95], [0.02, 1]])
    y = np.array([0, 0, 1, 0, 1, 1, 1, 1])  # sample 2 sits among class-0 samples but is labelled 1
    vote, share = neighbour_vote(f, y, 2, k=3, chunk=3)
    assert vote.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert share[2] == pytest.approx(1.0) and share[0] < 1.0
    pred = np.array([0, 0, 1, 0, 1, 1, 1, 0])
    assert suggested_labels(y, pred, vote).tolist() == [0, 0, 0, 0, 1, 1, 1, 0]


def test_fold_assignment_is_stratified_and_seeded():
    y = np.repeat(np.arange(4), 25)
    f = fold_assignment(y, 5, 0)
    assert (np.bincount(f) == 20).all()
    assert all((np.bincount(y[f == k]) == 5).all() for k in range(5))
    assert (f == fold_assignment(y, 5, 0)).all() and not (f == fold_assignment(y, 5, 1)).all()


# ------------------------------------------------------------------------- the cached stage
def test_noisy_run_has_rankings_and_meets_the_quality_target(noisy_run: Path):
    run = RunCache(noisy_run)
    data = load_mislabels(run)
    info = data.info
    assert set(info["methods"]) >= {"oga", "loss", "cleanlab", "self_influence:graddot", "self_influence:tracin"}
    t = data.table
    assert len(t) == run.n_train and t["index"].tolist() == list(range(run.n_train))
    for col in ("suggested_label", "pred_label", "oof_label", "proponent_label", "cleanlab_issue"):
        assert col in t.columns
    oof = np.load(noisy_run / "mislabels" / "oof_probs.npy")
    assert oof.shape == (run.n_train, 10) and np.allclose(oof.sum(1), 1, atol=1e-4)
    pro = np.load(noisy_run / "mislabels" / "proponents.npy")
    assert pro.shape == (run.n_train, 10) and not (pro == np.arange(run.n_train)[:, None]).any()
    det = info["detection"]
    assert set(det) == set(info["methods"])
    best = max(det.values(), key=lambda d: d["found@10%"])
    assert best["found@10%"] >= 0.80 and best["roc_auc"] >= 0.95
    for d in det.values():
        assert set(d) == {"roc_auc", "found@5%", "found@10%", "found@20%", "found@30%"}
    flipped = run.train_samples()["flipped"].to_numpy()
    orig = run.train_samples()["original_label"].to_numpy()
    assert (t["suggested_label"].to_numpy()[flipped] == orig[flipped]).mean() > 0.9
    assert info["packages"]["cleanlab"]


# ---------------------------------------------------------------------- --labels-override
def _cli(*args: str) -> int:
    return main(["precompute", "--sample", "digits-noisy", "--no-progress", "--epochs", "3", "--methods", "graddot",
                 "--no-mislabels", *args])


def test_labels_override_retrain_uses_the_new_labels(noisy_run: Path, tmp_path: Path):
    """Review decisions -> cleaned labels file -> precompute --labels-override -> the run trains on them."""
    run = RunCache(noisy_run)
    tr = run.train_samples()
    flipped = np.flatnonzero(tr["flipped"].to_numpy())
    given = tr["label"].to_numpy()
    with AnnotationStore(db_path(tmp_path, "noisy"), run="noisy") as store:
        for i in flipped[:40]:
            store.record(int(i), "relabel", int(tr.loc[i, "original_label"]), "ann", given_label=int(given[i]))
        store.record(int(flipped[40]), "unsure", None, "ann")
        exported = tmp_path / "decisions.json"
        store.export_json(exported)
    with AnnotationStore(db_path(tmp_path, "copy"), run="copy") as copy:  # re-imported decisions, same labels
        copy.import_file(exported)
        cleaned = copy.write_cleaned_labels(tmp_path / "cleaned.csv", given)
    out = tmp_path / "cache"
    assert _cli("--labels-override", str(cleaned), "--cache-dir", str(out), "--name", "cleaned") == 0
    new = RunCache(out / "cleaned")
    s = new.train_samples()
    expected = given.copy()
    expected[flipped[:40]] = tr["original_label"].to_numpy()[flipped[:40]]
    assert (s["label"].to_numpy() == expected).all()
    assert int(s["flipped"].sum()) == len(flipped) - 40
    lo = new.manifest["dataset"]["labels_override"]
    assert lo["changed"] == 40 and lo["rows"] == run.n_train
    assert new.manifest["config"]["data"]["labels_override_sha256"]
    # a changed file changes the run's identity: reusing the name without --overwrite is refused
    cleaned.write_text("index,label\n0,3\n")
    assert _cli("--labels-override", str(cleaned), "--cache-dir", str(out), "--name", "cleaned") == 2


@pytest.mark.parametrize("text,needle", [
    (None, "not found"),
    ("idx,lab\n0,1\n", "columns"),
    ("index,label\n5000,1\n", "out of range"),
    ("index,label\nx,1\n", "not an integer"),
    ("index,label\n0,11\n", "not a class"),
    ("index,label\n0,1\n0,2\n", "more than once"),
])
def test_bad_labels_override_is_one_line_error_and_writes_nothing(tmp_path: Path, capsys, text, needle):
    f = tmp_path / "labels.csv"
    if text is not None:
        f.write_text(text)
    out = tmp_path / "cache"
    assert _cli("--labels-override", str(f), "--cache-dir", str(out), "--name", "bad") == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and needle in lines[0] and "labels.csv" in lines[0]
    assert not (out / "bad").exists()
    assert not (out.exists() and any(out.glob(".bad*")))


def test_config_section_validates(tmp_path: Path):
    from precompute.config import RunConfig
    from precompute.errors import ConfigError

    for bad in ({"folds": 1}, {"detector": "svm"}, {"topk": 0}):
        with pytest.raises(ConfigError, match="mislabels"):
            RunConfig.from_dict({"mislabels": bad}).validate()
    cfg = RunConfig.from_dict({"mislabels": {"folds": 0, "detector": "lof"}}).validate()
    assert cfg.identity()["mislabels"]["detector"] == "lof"
    assert json.dumps(cfg.identity())
