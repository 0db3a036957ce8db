"""Top-k toward the predicted label ("why did it predict 7?"): the streamed store scoring against a
brute-force dense computation on a tiny float64 model; the arrays of a real run; the reader's checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import open_app as _app

from cache_format import names as fmt
from cache_format.predicted import load_predicted
from cache_format.runs import CacheProblem, RunCache
from precompute.influence import get_estimator
from precompute.influence._toy import tiny_task
from precompute.store import GradientStore, StoreSpec
from precompute.store.predicted_label import (
    misclassified,
    predicted_label_topk,
    supports_predicted_label,
)
from precompute.store.scoring import train_factor_fn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _brute_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k proponent / opponent ids of a dense ``[m, n]`` float64 matrix, ties to the lower id."""
    ids = np.arange(scores.shape[1])
    pro = np.stack([np.lexsort((ids, -r))[:k] for r in scores])
    opp = np.stack([np.lexsort((ids, r))[:k] for r in scores])
    return pro, opp


def _grad(model: torch.nn.Module, x: torch.Tensor, y: int) -> torch.Tensor:
    """The loss gradient of one sample, flattened (plain autograd, independent of the project's code)."""
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x[None]), torch.tensor([y]))
    grads = torch.autograd.grad(loss, [p for p in model.parameters()])
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.fixture(scope="module")
def tiny():
    return tiny_task("mlp", n_train=60, n_test=15, damping=0.1)


def _store(tmp: Path, est, task, chunk_rows: int) -> GradientStore:
    probe = est.train_factors(task.x_train[:1], task.y_train[:1])
    spec = StoreSpec(n=task.n_train, k=int(probe.shape[1]), dtype="float64", chunk_rows=chunk_rows, fingerprint="t")
    store = GradientStore(tmp / f"store-{est.name}-{chunk_rows}", spec)
    store.fill(train_factor_fn(est, task, 16))
    return store


@pytest.mark.parametrize("method", ["graddot", "exact", "tracin"])
def test_streamed_topk_matches_the_dense_brute_force(tiny, tmp_path, method):
    task, x_test, y_test = tiny
    est = get_estimator(method).fit(task)
    assert supports_predicted_label(est)
    rows = np.array([1, 4, 5, 9, 14])
    labels = (y_test.numpy()[rows] + 1) % 3  # another label than the true one, as for a mistake
    k = 7
    # dense reference: every score of those rows toward ``labels``, in float64
    q = est.query_factors(x_test[torch.as_tensor(rows)], torch.as_tensor(labels))
    dense = est.scores(q, est.train_factors(task.x_train, task.y_train)).detach().numpy()
    if method == "graddot":  # and graddot's from plain autograd gradients: g(x_t, label) . g(x_i, y_i)
        gq = torch.stack([_grad(task.model, x_test[r], int(c)) for r, c in zip(rows, labels, strict=True)])
        gt = torch.stack([_grad(task.model, task.x_train[i], int(task.y_train[i])) for i in range(task.n_train)])
        np.testing.assert_allclose(dense, (gq @ gt.T).numpy(), rtol=1e-10, atol=1e-12)
    pro, opp = _brute_topk(dense, k)
    for chunk_rows, block in ((60, 16), (7, 2)):  # one chunk, or many chunks and test blocks: same answer
        got = predicted_label_topk(est, _store(tmp_path, est, task, chunk_rows), x_test, rows, labels, k, block)
        np.testing.assert_array_equal(got.pro, pro)
        np.testing.assert_array_equal(got.opp, opp)
        np.testing.assert_allclose(got.pro_s, np.take_along_axis(dense, pro, 1).astype(np.float32), rtol=1e-6)
        np.testing.assert_allclose(got.opp_s, np.take_along_axis(dense, opp, 1).astype(np.float32), rtol=1e-6)
    # the label matters: toward the true label the proponents are others
    q_true = est.query_factors(x_test[torch.as_tensor(rows)], y_test[torch.as_tensor(rows)])
    true_pro, _ = _brute_topk(est.scores(q_true, est.train_factors(task.x_train, task.y_train)).detach().numpy(), k)
    assert not np.array_equal(true_pro, pro)


def test_misclassified_rows_and_labels():
    rows, labels = misclassified(np.array([0, 2, 1, 1, 0]), np.array([0, 1, 1, 2, 0]))
    assert rows.tolist() == [1, 3] and labels.tolist() == [2, 1]
    assert rows.dtype == np.int32 and labels.dtype == np.int32


def test_datamodels_is_skipped():
    assert not supports_predicted_label(get_estimator("datamodels"))


def test_a_real_run_has_them_for_every_misclassified_point(digits_run: Path):
    run = RunCache(digits_run)
    test = run.test_samples().sort_index()
    wrong = np.flatnonzero(~test["correct"].to_numpy())
    assert len(wrong) > 0
    for method in run.methods:
        got = load_predicted(run, method)
        assert got is not None, method
        assert got.rows.tolist() == wrong.tolist()
        assert got.labels.tolist() == test["pred"].to_numpy()[wrong].tolist()
        assert got.pro.shape == (len(wrong), run.manifest["methods"][method]["topk"])
        assert (np.diff(got.pro_scores, axis=1) <= 0).all() and (np.diff(got.opp_scores, axis=1) >= 0).all()
        info = run.manifest["methods"][method]["predicted_label"]
        assert info["rows"] == len(wrong) and info["k"] == got.pro.shape[1]
        assert got.position(int(wrong[0])) == 0
        correct = int(np.flatnonzero(test["correct"].to_numpy())[0])
        assert got.position(correct) is None


def _copy(run: Path, dst: Path) -> Path:
    out = dst / run.name
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("evaluation"))
    return out


def test_old_runs_read_as_absent_and_damaged_arrays_are_named(digits_run: Path, tmp_path):
    path = _copy(digits_run, tmp_path)
    folder = path / fmt.METHODS_DIR / "graddot"
    ids = np.load(folder / f"{fmt.PREDICTED_PROPONENTS}.npy")
    ids[0, 0] = 10**6
    np.save(folder / f"{fmt.PREDICTED_PROPONENTS}.npy", ids)
    with pytest.raises(CacheProblem, match="predicted_proponents.npy holds training ids outside"):
        load_predicted(RunCache(path), "graddot")
    (folder / f"{fmt.PREDICTED_LABELS}.npy").unlink()
    with pytest.raises(CacheProblem, match="predicted_labels.npy is missing"):
        load_predicted(RunCache(path), "graddot")
    for name in (fmt.PREDICTED_ROWS, fmt.PREDICTED_PROPONENTS, fmt.PREDICTED_PROPONENT_SCORES,
                 fmt.PREDICTED_OPPONENTS, fmt.PREDICTED_OPPONENT_SCORES):
        (folder / f"{name}.npy").unlink()
    assert load_predicted(RunCache(path), "graddot") is None


# --- the influence view's toggle ("toward the predicted label") --------------------------------------


def _card_ids(at, prefix: str) -> list[int]:
    return [int(b.key.rsplit("_", 1)[1]) for b in at.button if b.key and b.key.startswith(prefix + "_")]


def _toggles(at) -> list[str]:
    return [w.key for w in at.segmented_control if w.key == "w_toward"]


def test_the_toggle_shows_the_predicted_labels_topk_for_a_mistake_only(digits_run: Path, monkeypatch):
    run = RunCache(digits_run)
    test = run.test_samples().sort_index()
    wrong = int(np.flatnonzero(~test["correct"].to_numpy())[0])
    right = int(np.flatnonzero(test["correct"].to_numpy())[0])
    at = _app(digits_run.parent, monkeypatch, page="influence", run="digits", test=right, method="graddot")
    assert _toggles(at) == []
    at = _app(digits_run.parent, monkeypatch, page="influence", run="digits", test=wrong, method="graddot")
    assert _toggles(at) == ["w_toward"]
    assert _card_ids(at, "pro") == run.method_array("graddot", "top_proponents")[wrong, :8].tolist()
    at.segmented_control(key="w_toward").set_value("predicted").run()
    assert not at.exception
    got = load_predicted(run, "graddot")
    i = got.position(wrong)
    assert _card_ids(at, "pro") == got.pro[i, :8].tolist() and _card_ids(at, "opp") == got.opp[i, :8].tolist()
    pred_name = run.class_names[int(test.loc[wrong, "pred"])]
    assert any(f"pushed toward label {pred_name} (the prediction)" in h.value for h in at.subheader)
    assert at.query_params["toward"] in ("predicted", ["predicted"])  # in the URL: a bookmark opens the same explanation
    linked = _app(digits_run.parent, monkeypatch, page="influence", run="digits", test=wrong, method="graddot",
                  toward="predicted")
    assert _card_ids(linked, "pro") == got.pro[i, :8].tolist()
    bogus = _app(digits_run.parent, monkeypatch, page="influence", run="digits", test=wrong, method="graddot",
                 toward="sideways")
    assert any("toward" in w.value and "predicted" in w.value for w in bogus.warning)  # said, not silent
    assert _card_ids(bogus, "pro") == run.method_array("graddot", "top_proponents")[wrong, :8].tolist()
    # presenter mode (a fresh session: the true label first) has the toggle too, below the cards
    at = _app(digits_run.parent, monkeypatch, page="influence", run="digits", test=wrong, method="graddot", present=1)
    assert _toggles(at) == ["w_toward"] and _card_ids(at, "pro") == run.method_array(
        "graddot", "top_proponents")[wrong, :4].tolist()


def test_an_old_cache_without_the_arrays_still_opens_and_says_so(digits_run: Path, tmp_path, monkeypatch):
    import json

    path = _copy(digits_run, tmp_path)
    manifest = json.loads((path / fmt.MANIFEST).read_text())
    for rel in [r for r in manifest["arrays"] if "/predicted_" in r]:
        (path / rel).unlink()
        del manifest["arrays"][rel]
    for info in manifest["methods"].values():
        info.pop("predicted_label", None)
    (path / fmt.MANIFEST).write_text(json.dumps(manifest))
    test = RunCache(path).test_samples().sort_index()
    wrong = int(np.flatnonzero(~test["correct"].to_numpy())[0])
    at = _app(tmp_path, monkeypatch, page="influence", run="digits", test=wrong, method="exact")
    assert at.title[0].value.startswith(f"Test #{wrong}:")
    at.segmented_control(key="w_toward").set_value("predicted").run()
    assert not at.exception
    assert any("not precomputed for this run" in i.value for i in at.info)
    assert _card_ids(at, "pro") == []
