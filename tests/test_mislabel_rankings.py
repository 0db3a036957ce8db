"""The checkpoint/influence mislabel rankings and OGA on the gradient store: exact against autograd
references on tiny float64 models, and each signal on a planted case where it must separate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cache_format.mislabels import detection_report, load_mislabels
from cache_format.runs import RunCache
from precompute.config import TrainConfig
from precompute.gradients import per_sample_gradients
from precompute.mislabels.dynamics import checkpoint_rankings, middle_checkpoint
from precompute.mislabels.oga_store import (
    fill_gradient_store,
    oga_scores_from_store,
    train_topk_from_store,
)
from precompute.mislabels.oof import _torch_threads
from precompute.mislabels.ranking import oga_scores, train_topk
from precompute.mislabels.signals import (
    area_under_margin,
    class_influence,
    head_gradient_sq_norm,
    knn_disagreement,
    rank_ensemble,
    tracin_self_influence,
)
from precompute.params import ParamSpace, select_parameters
from precompute.training import train_model


def _tiny(seed: int = 0, n: int = 40, n_test: int = 15):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double().eval()
    x, xt = torch.randn(n, 4, dtype=torch.float64), torch.randn(n_test, 4, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (n,)), xt, torch.randint(0, 3, (n_test,))


def _head(model, x):
    feats = model[:2](x).detach().numpy()
    return torch.softmax(model(x), 1).detach().numpy(), feats


def _clusters(n_per: int = 60, seed: int = 0, flip: int = 12):
    """Three separated Gaussian clusters; ``flip`` labels moved to the next class (ground truth)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[4.0, 0], [-2, 3.5], [-2, -3.5]])
    x = np.concatenate([c + rng.normal(0, 1.0, (n_per, 2)) for c in centres])
    y = np.repeat(np.arange(3), n_per)
    flipped = np.zeros(len(y), bool)
    flipped[rng.choice(len(y), flip, replace=False)] = True
    given = np.where(flipped, (y + 1) % 3, y)
    return x, y, given, flipped


# ------------------------------------------------------------------------------ exact vs autograd
def test_head_kernels_equal_autograd_per_sample_gradients():
    model, x, y, xt, yt = _tiny()
    space = ParamSpace(model, select_parameters(model, "last_layer"))
    g, gt = per_sample_gradients(model, x, y, space).numpy(), per_sample_gradients(model, xt, yt, space).numpy()
    p, h = _head(model, x)
    pt, ht = _head(model, xt)
    np.testing.assert_allclose(head_gradient_sq_norm(p, h, y.numpy()), (g ** 2).sum(1), rtol=1e-10)
    np.testing.assert_allclose(tracin_self_influence([(0.5, p, h), (2.0, p, h)], y.numpy()), 2.5 * (g ** 2).sum(1),
                               rtol=1e-10)
    ref = np.stack([(g @ gt[yt.numpy() == c].T).mean(1) for c in range(3)], 1)  # [n, C] mean g_i . g_t per class
    np.testing.assert_allclose(class_influence(p, h, y.numpy(), pt, ht, yt.numpy(), 3), ref, rtol=1e-9, atol=1e-12)


# -------------------------------------------------------------------------------- planted cases
def test_tracin_self_influence_ranks_persistently_unfit_samples_first():
    rng = np.random.default_rng(0)
    n, c = 200, 4
    y = rng.integers(0, c, n)
    bad = np.arange(n) < 20
    snaps = []
    for lr in (1.0, 0.5, 0.1):
        p = np.full((n, c), 0.02)
        p[np.arange(n), y] = rng.uniform(0.7, 0.94, n)
        p[bad, y[bad]] = rng.uniform(0.02, 0.3, bad.sum())  # the planted samples stay unfit
        snaps.append((lr, p / p.sum(1, keepdims=True), rng.normal(size=(n, 5))))
    assert detection_report(tracin_self_influence(snaps, y), bad)["roc_auc"] > 0.95


def test_class_influence_flags_samples_that_hurt_a_clean_test_class():
    x, y, given, flipped = _clusters()
    xt, yt, _, _ = _clusters(20, seed=1, flip=0)
    # a softmax-regression head on the raw points, fitted to the clean centres (features = inputs)
    w = np.array([[2.0, 0], [-1, 1.75], [-1, -1.75]])

    def probs(a):
        z = a @ w.T
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    infl = class_influence(probs(x), x, given, probs(xt), xt, yt, 3)
    assert detection_report(-infl.min(1), flipped)["roc_auc"] > 0.95
    assert (infl[flipped, y[flipped]] < 0).all()  # a flipped sample hurts its true class's test points


def test_knn_disagreement_flags_labels_unlike_their_neighbours():
    x, _, given, flipped = _clusters()
    s = knn_disagreement(x, given, k=10, chunk=17)
    assert detection_report(s, flipped)["roc_auc"] > 0.95
    assert s.min() >= 0 and s.max() <= 1


def test_area_under_margin_flags_labels_the_model_keeps_voting_against():
    rng = np.random.default_rng(3)
    n = 150
    y = rng.integers(0, 3, n)
    bad = rng.random(n) < 0.1
    logits = []
    for _ in range(4):
        z = rng.normal(0, 1, (n, 3))
        z[np.arange(n), y] += np.where(bad, -2.0, 3.0)
        logits.append(z)
    assert detection_report(area_under_margin(logits, y), bad)["roc_auc"] > 0.95


def test_rank_ensemble_averages_out_the_independent_errors_of_its_signals():
    rng = np.random.default_rng(4)
    n = 600
    flipped = np.arange(n) < 60
    signals = [(flipped * 1.5 + rng.normal(0, 1, n)) * scale for scale in (1.0, 1e-3, 100.0)]  # any scale
    ens = rank_ensemble(signals)
    single = max(detection_report(s, flipped)["roc_auc"] for s in signals)
    assert detection_report(ens, flipped)["roc_auc"] > single + 0.03
    assert 0 < ens.min() and ens.max() <= 1
    np.testing.assert_allclose(rank_ensemble(signals[:1]), (np.argsort(np.argsort(signals[0])) + 1) / n)


def test_checkpoint_rankings_on_a_trained_model_with_planted_flips():
    x, _, given, flipped = _clusters(80, seed=5, flip=24)
    xt, yt, _, _ = _clusters(30, seed=6, flip=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    cfg = TrainConfig(epochs=10, lr=0.05, batch_size=60, checkpoints=5)
    with _torch_threads(1):  # a tiny model: one thread is fastest
        tr = train_model(model, torch.as_tensor(x), torch.as_tensor(given), cfg)
    model.eval()
    scores, info = checkpoint_rankings(model, tr.checkpoints, torch.as_tensor(x), given, torch.as_tensor(xt), yt, 3)
    assert info["checkpoints"] == 5 and info["middle_checkpoint"] == middle_checkpoint(5) == 1
    for name in ("ensemble", "tracin_self", "class_influence", "neighbour_disagreement", "margin"):
        assert detection_report(scores[name], flipped)["roc_auc"] > 0.9, name
    only_final, _ = checkpoint_rankings(model, None, torch.as_tensor(x), given, torch.as_tensor(xt), yt, 3)
    assert detection_report(only_final["ensemble"], flipped)["roc_auc"] > 0.9


# ------------------------------------------------------------------------- OGA on the gradient store
def test_oga_and_proponents_from_the_store_equal_the_in_memory_ones(tmp_path: Path):
    model, x, y, _, _ = _tiny(n=83)
    space = ParamSpace(model, select_parameters(model, "last_layer"))
    store = fill_gradient_store(model, x, y, space, tmp_path / "s", chunk_rows=20, batch_size=7)
    g = per_sample_gradients(model, x, y, space).numpy()
    assert store.spec.n_chunks == 5
    np.testing.assert_array_equal(store.read(), g)
    for det in ("isolation_forest", "lof"):
        np.testing.assert_array_equal(oga_scores_from_store(store, det, seed=3), oga_scores(g, det, seed=3))
    for got, want in zip(train_topk_from_store(store, 5, block=9), train_topk(g, 5, chunk=10), strict=True):
        if got.dtype.kind == "i":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mislabels.detector"):
        oga_scores_from_store(store, "svm", fit_rows=10)


def test_the_store_holds_the_compressed_head_gradients_when_a_compressor_is_given(tmp_path: Path):
    from precompute.compression import CompressionConfig, GradientCompressor

    model, x, y, _, _ = _tiny(n=50)
    model = torch.nn.Sequential(torch.nn.Linear(4, 40), torch.nn.Tanh(), torch.nn.Linear(40, 30)).double().eval()
    y = torch.randint(0, 30, (50,))
    space = ParamSpace(model, select_parameters(model, "last_layer"))
    comp = GradientCompressor.create(CompressionConfig(kind="factored", dim=64, dense_below=0), model, space, x[:2])
    assert comp.dim < space.size
    store = fill_gradient_store(model, x, y, space, tmp_path / "c", chunk_rows=16, compressor=comp, batch_size=9)
    assert store.spec.k == comp.dim
    np.testing.assert_allclose(store.read(), comp.compress(model, x, y).numpy(), rtol=1e-12, atol=1e-12)
    assert np.isfinite(oga_scores_from_store(store)).all()


def test_oga_from_a_subsampled_store_still_flags_planted_outliers(tmp_path: Path):
    rng = np.random.default_rng(0)
    g = rng.normal(0, 0.1, (600, 12))
    g[:30] += rng.normal(0, 3.0, (30, 12))
    from precompute.store.gradient_store import GradientStore, StoreSpec

    store = GradientStore(tmp_path / "g", StoreSpec(n=600, k=12, dtype="float64", chunk_rows=64, fingerprint="t"))
    store.fill(lambda s, e: g[s:e])
    for det in ("isolation_forest", "lof"):
        s = oga_scores_from_store(store, det, seed=0, fit_rows=200)  # fitted on 200 of 600 rows
        assert detection_report(s, np.arange(600) < 30)["roc_auc"] > 0.95, det


# ------------------------------------------------------------------------------ the cached stage
def test_noisy_run_records_the_default_ranking_and_why(noisy_run: Path):
    data = load_mislabels(RunCache(noisy_run))
    assert data.ranking_default == data.default_method == "ensemble"
    assert "TracIn" in data.ranking_reason and data.info["best_on_injected_noise"] in data.methods
    for name in ("ensemble", "tracin_self", "class_influence", "neighbour_disagreement", "margin", "oga"):
        assert name in data.methods and name in data.table.columns
    assert data.info["oga"]["store"]["chunks"] >= 1
    assert data.detection["ensemble"]["roc_auc"] > 0.95
