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


@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
@pytest.mark.parametrize("budget", [1, 10**9])  # one vector per vmapped call / all vectors at once
def test_hvp_equals_autograd_hessian_in_any_chunking(monkeypatch, budget: int, mode: str) -> None:
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
    hvp = hessian.create_hvp_function(model, space, x, y, wd, batch_size=4, mode=mode)  # 3 data batches
    # more than REVERSE_HVP_MAX_VECTORS rows, then 3 and 1: "auto" takes both modes
    v = torch.randn(hessian.REVERSE_HVP_MAX_VECTORS + 4, space.size, dtype=torch.float64)
    for _ in range(2):  # the second round reuses the kept reverse-mode graph (budget 10**9: one row block)
        assert torch.allclose(hvp(v), v @ dense, atol=1e-10)
        assert torch.allclose(hvp(v[:3]), v[:3] @ dense, atol=1e-10)
        with torch.no_grad():
            assert torch.allclose(hvp(v[0]), dense @ v[0], atol=1e-10)


def test_hvp_modes_agree_in_float32() -> None:
    """Forward- and reverse-over-reverse HVPs agree to float32 rounding (the digits-sized path, kept graph)."""
    import precompute.hessian as hessian

    torch.manual_seed(1)
    model = build_model(ModelConfig(arch="mlp", hidden=[16]), (1, 8, 8), 10)
    x, y = torch.randn(300, 1, 8, 8), torch.randint(0, 10, (300,))
    space = ParamSpace(model, select_parameters(model))
    fwd = hessian.create_hvp_function(model, space, x, y, 1e-3, mode="forward")
    rev = hessian.create_hvp_function(model, space, x, y, 1e-3, mode="reverse")
    v = torch.randn(5, space.size)
    for _ in range(2):
        a, b = fwd(v), rev(v)
        assert float((a - b).abs().max() / a.abs().max()) < 1e-5
    with pytest.raises(ValueError, match="mode"):
        hessian.create_hvp_function(model, space, x, y, 1e-3, mode="sideways")


def test_reverse_hvp_falls_back_to_one_vector_at_a_time() -> None:
    """Where vmap cannot batch the second backward (the digits CNN in float32), the vectors go one by one."""
    from precompute.hessian import _backward_each

    def back(v: torch.Tensor) -> tuple[torch.Tensor]:
        if torch._C._functorch.is_batchedtensor(v):
            raise RuntimeError("NYI: querying is_contiguous inside of vmap")
        return (2 * v,)

    vmapped = [True]
    v = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(_backward_each(back, v, vmapped), 2 * v) and vmapped == [False]
    assert torch.equal(_backward_each(back, v, vmapped), 2 * v)  # remembered: no second try


def test_activation_size_counts_leaf_outputs() -> None:
    from precompute.hessian import activation_size

    model = build_model(ModelConfig(arch="mlp", hidden=[7, 5], dtype="float64"), (1, 8, 8), 4)
    # Flatten 64 + Linear 7 + Tanh 7 + Linear 5 + Tanh 5 + Linear 4
    assert activation_size(model, torch.zeros(1, 1, 8, 8, dtype=torch.float64)) == 64 + 7 + 7 + 5 + 5 + 4
