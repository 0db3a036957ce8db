"""Per-sample gradients: torch.func vmap equals the slow autograd loop (float64)."""

from __future__ import annotations

import pytest
import torch

from precompute.config import ModelConfig
from precompute.gradients import per_sample_gradients, per_sample_gradients_loop
from precompute.models import build_model
from precompute.params import ParamSpace, select_parameters


@pytest.mark.parametrize("arch", ["logreg", "mlp", "cnn"])
@pytest.mark.parametrize("spec", ["all", "last_layer"])
def test_vmap_matches_loop(arch: str, spec: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, hidden=[7], dtype="float64"), (1, 8, 8), 4)
    x = torch.randn(13, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (13,))
    space = ParamSpace(model, select_parameters(model, spec))
    fast = per_sample_gradients(model, x, y, space, batch_size=5)  # batches of 5: exercises the chunking
    slow = per_sample_gradients_loop(model, x, y, space)
    assert fast.shape == (13, space.size)
    assert torch.allclose(fast, slow, rtol=1e-10, atol=1e-12)
    assert fast.abs().sum() > 0


def test_last_layer_is_a_suffix_of_all() -> None:
    torch.manual_seed(1)
    model = build_model(ModelConfig(arch="mlp", hidden=[5], dtype="float64"), (1, 8, 8), 3)
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    full = per_sample_gradients(model, x, y, ParamSpace(model, select_parameters(model, "all")))
    head_space = ParamSpace(model, select_parameters(model, "last_layer"))
    head = per_sample_gradients(model, x, y, head_space)
    assert head_space.names == ["3.weight", "3.bias"]
    assert torch.allclose(full[:, -head_space.size:], head)


def test_params_override_uses_given_values() -> None:
    torch.manual_seed(2)
    model = build_model(ModelConfig(arch="logreg", dtype="float64"), (1, 8, 8), 3)
    space = ParamSpace(model, select_parameters(model, "all"))
    x, y = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2])
    zero = {n: torch.zeros_like(p) for n, p in space.params(model).items()}
    g = per_sample_gradients(model, x, y, space, params=zero)
    # at theta = 0 the softmax is uniform: d loss / d bias = 1/C - onehot(y)
    expected_bias = torch.full((3, 3), 1 / 3, dtype=torch.float64) - torch.eye(3, dtype=torch.float64)
    assert torch.allclose(g[:, -3:], expected_bias)


@pytest.mark.parametrize("budget", [1, 10**9])  # one vector per vmapped call / all vectors at once
def test_hvp_equals_autograd_hessian_in_any_chunking(monkeypatch, budget: int) -> None:
    import precompute.hessian as hessian

    monkeypatch.setattr(hessian, "HVP_WORK_BUDGET", budget)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="cnn", hidden=[5], dtype="float64"), (1, 6, 6), 3)
    x, y = torch.randn(11, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (11,))
    space = ParamSpace(model, select_parameters(model))
    objective = hessian.create_batch_objective_function(model, space)
    theta = space.flatten(space.params(model))
    wd = 0.1
    dense = torch.autograd.functional.hessian(lambda t: objective(t, x, y) / len(x) + wd / 2 * t @ t, theta)
    hvp = hessian.create_hvp_function(model, space, x, y, wd, batch_size=4)  # 3 data batches
    v = torch.randn(7, space.size, dtype=torch.float64)
    assert torch.allclose(hvp(v), v @ dense, atol=1e-10)
    assert torch.allclose(hvp(v[0]), dense @ v[0], atol=1e-10)


def test_activation_size_counts_leaf_outputs() -> None:
    from precompute.hessian import activation_size

    model = build_model(ModelConfig(arch="mlp", hidden=[7, 5], dtype="float64"), (1, 8, 8), 4)
    # Flatten 64 + Linear 7 + Tanh 7 + Linear 5 + Tanh 5 + Linear 4
    assert activation_size(model, torch.zeros(1, 1, 8, 8, dtype=torch.float64)) == 64 + 7 + 7 + 5 + 5 + 4
