"""Store-based estimators on compressed gradients: exact when nothing is compressed, close when it is."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cache_format.metrics import spearman_rows
from precompute.compression import CompressionConfig, GradientCompressor
from precompute.influence import available_methods, estimator_class, get_estimator
from precompute.influence._toy import tiny_task
from precompute.influence.runner import compute_scores

COMPRESSIBLE = [m for m in available_methods() if estimator_class(m).capabilities.compressed_store]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _options(method: str) -> dict:
    opts = dict(estimator_class(method).quick_options)
    fields = estimator_class(method).config_class.__dataclass_fields__
    if "proj_dim" in fields:
        opts["proj_dim"] = 10**6  # the uncompressed reference does not project either
    if "fisher" in fields:
        opts["fisher"] = "ggn"  # "auto" is the GGN uncompressed but the sampled Fisher when compressed
    return opts


def test_the_compressible_methods_are_gradient_similarity_and_kronecker():
    assert {"graddot", "gradcos", "tracin", "trak", "kfac", "ekfac"} <= set(COMPRESSIBLE)
    assert "exact" not in COMPRESSIBLE and "cg" not in COMPRESSIBLE  # they need exact gradients and HVPs


@pytest.mark.parametrize("kind", ["factored", "dropout"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("method", COMPRESSIBLE)
def test_with_dim_at_least_p_compression_changes_nothing(method, arch, kind):
    task, xs, ys = tiny_task(arch, damping=0.1)
    comp = GradientCompressor.create(CompressionConfig(kind=kind, dim=10**6, dtype="float64"), task.model, task.space,
                                     task.x_train[:2])
    assert comp.dim == task.space.size
    plain = compute_scores(get_estimator(method, _options(method)), task, xs, ys)
    packed = compute_scores(get_estimator(method, _options(method)), dataclasses.replace(task, compressor=comp), xs, ys)
    np.testing.assert_allclose(packed, plain, rtol=1e-8, atol=1e-10 * np.abs(plain).max())


@pytest.fixture(scope="module")
def digits_mlp_task():
    from precompute.config import load_config
    from precompute.data import load_dataset
    from precompute.influence import InfluenceTask
    from precompute.models import build_model
    from precompute.params import ParamSpace, select_parameters
    from precompute.training import train_model
    from sample_data import sample_config_path

    cfg = load_config(sample_config_path("digits"))
    ds = load_dataset(cfg.data)
    x, y = torch.as_tensor(ds.x_train, dtype=torch.float32), torch.as_tensor(ds.y_train)
    model = build_model(cfg.model, ds.input_shape, ds.n_classes)
    res = train_model(model, x, y, cfg.train)
    model.eval()
    task = InfluenceTask(model, ParamSpace(model, select_parameters(model, "all")), x, y, cfg.train.weight_decay,
                         "auto", res.checkpoints)
    return task, torch.as_tensor(ds.x_test[:120], dtype=torch.float32), torch.as_tensor(ds.y_test[:120])


@pytest.mark.parametrize("kind", ["factored", "dropout"])
@pytest.mark.parametrize("method", ["graddot", "tracin"])
def test_compressed_4x_keeps_the_ranking_on_the_digits_mlp(digits_mlp_task, method, kind):
    task, xs, ys = digits_mlp_task
    dim = task.space.size // 4
    comp = GradientCompressor.create(CompressionConfig(kind=kind, dim=dim), task.model, task.space, task.x_train[:2])
    assert comp.dim <= dim
    plain = compute_scores(get_estimator(method), task, xs, ys)
    packed = compute_scores(get_estimator(method), dataclasses.replace(task, compressor=comp), xs, ys)
    rho = spearman_rows(packed, plain)
    assert np.nanmean(rho) >= 0.9 and np.nanmin(rho) >= 0.6


@pytest.mark.parametrize("method", ["ekfac", "kfac"])
def test_kronecker_methods_at_the_default_dims_keep_the_ranking_on_the_digits_mlp(digits_mlp_task, method):
    """Compressed-space K-FAC/EK-FAC (the run's compressor at its default dims) vs the parameter-space fit."""
    task, xs, ys = digits_mlp_task
    comp = GradientCompressor.create(CompressionConfig(kind="factored"), task.model, task.space, task.x_train[:2])
    plain = compute_scores(get_estimator(method, {"fisher": "sampled"}), task, xs, ys)
    est = get_estimator(method, {"fisher": "sampled"})
    packed = compute_scores(est, dataclasses.replace(task, compressor=comp), xs, ys)
    assert est.fit_info()["space"] == "compressed"
    rho = spearman_rows(packed, plain)
    assert np.nanmean(rho) >= 0.9 and np.nanmin(rho) >= 0.8


def test_trak_without_a_compressor_projects_per_layer_when_a_dense_projection_would_not_fit(monkeypatch):
    """p x proj_dim above DENSE_PROJECTION_MAX: TRAK makes its own factored compressor (never a dense
    [p, k] Gaussian) and scores as it does with the run's compressor of the same settings."""
    from precompute.influence import trak as trak_mod

    task, xs, ys = tiny_task("cnn", damping=0.1)
    monkeypatch.setattr(trak_mod, "DENSE_PROJECTION_MAX", 0)
    est = get_estimator("trak", {"proj_dim": 16, "seed": 3})
    own = compute_scores(est, task, xs, ys)
    assert est.fit_info()["proj_dim"].startswith("compressor") and est.projections_ == [None] * len(est.models_)
    comp = GradientCompressor.create(CompressionConfig(kind="factored", dim=16, seed=3), task.model, task.space,
                                     task.x_train[:2])
    run_comp = compute_scores(get_estimator("trak", {"proj_dim": 16, "seed": 3}),
                              dataclasses.replace(task, compressor=comp), xs, ys)
    np.testing.assert_allclose(own, run_comp, rtol=1e-6, atol=1e-9 * np.abs(run_comp).max())
