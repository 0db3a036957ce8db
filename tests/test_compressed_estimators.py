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
    if "proj_dim" in estimator_class(method).config_class.__dataclass_fields__:
        opts["proj_dim"] = 10**6  # the uncompressed reference does not project either
    return opts


def test_the_compressible_methods_are_the_gradient_similarity_family():
    assert {"graddot", "gradcos", "tracin", "trak"} <= set(COMPRESSIBLE)
    assert "exact" not in COMPRESSIBLE and "ekfac" not in COMPRESSIBLE  # Hessian methods see exact gradients


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
