"""Per-sample gradients on the hook path (no torch.func) equal the slow autograd loop (float64), and
models outside the hook path fall back to vmap(grad) with the same result."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from precompute.config import ModelConfig
from precompute.gradients import (
    create_per_sample_grad_function,
    per_sample_gradients,
    per_sample_gradients_loop,
)
from precompute.hooked_gradients import hook_plan
from precompute.models import build_model
from precompute.params import ParamSpace, select_parameters

ROOT = Path(__file__).resolve().parents[1]


def _data(n: int = 11, c: int = 3, shape: tuple[int, ...] = (1, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, *shape, dtype=torch.float64), torch.randint(0, c, (n,))


def _assert_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec="all", hooked: bool = True) -> torch.Tensor:
    space = ParamSpace(model, select_parameters(model, spec))
    assert (hook_plan(model, space) is not None) == hooked
    fast = per_sample_gradients(model, x, y, space, batch_size=4)  # 3 batches
    slow = per_sample_gradients_loop(model, x, y, space)
    assert fast.shape == (len(x), space.size)
    assert (fast - slow).abs().max() <= 1e-10
    assert slow.abs().sum() > 0
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in model.parameters())  # put back
    return fast


def _with_stats(model: nn.Module) -> nn.Module:
    """Eval mode with non-trivial BatchNorm running statistics."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
    return model.double().eval()


@pytest.mark.parametrize("arch", ["logreg", "mlp", "cnn"])
@pytest.mark.parametrize("spec", ["all", "last_layer"])
def test_builtin_models_take_the_hook_path(arch: str, spec: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, hidden=[7], dtype="float64"), (1, 8, 8), 4)
    _assert_loop(model, *_data(c=4), spec=spec)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # the asymmetric padding case
def test_conv_variants_batch_norm_inplace_and_dropout() -> None:
    torch.manual_seed(1)
    model = _with_stats(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(4), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding="same", dilation=2, groups=2, padding_mode="reflect"), nn.Tanh(),
        nn.Conv2d(6, 6, 2, stride=2, bias=False), nn.Conv2d(6, 5, 2, padding="same"), nn.Flatten(),
        nn.Linear(20, 7), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.BatchNorm1d(7), nn.Linear(7, 3)))
    _assert_loop(model, *_data())


def test_linear_on_positions_reused_module_and_partial_space() -> None:
    torch.manual_seed(2)
    shared = nn.Linear(8, 8)  # called twice: its per-sample gradient is the sum over both calls
    model = nn.Sequential(nn.Flatten(2), nn.Linear(64, 8), nn.GELU(), shared, nn.Tanh(), shared,
                          nn.Flatten(), nn.Linear(16, 3)).double().eval()
    x, y = torch.randn(9, 2, 8, 8, dtype=torch.float64), torch.randint(0, 3, (9,))
    _assert_loop(model, x, y)  # Linear on [b, 2, 64]: summed over the 2 positions
    _assert_loop(model, x, y, spec=["3.", "7.bias"])  # only some parameters; the first layer frozen


def test_checkpoint_params_out_block_and_outer_no_grad() -> None:
    torch.manual_seed(3)
    model = build_model(ModelConfig(arch="cnn", hidden=[5], dtype="float64"), (1, 8, 8), 3)
    space = ParamSpace(model, select_parameters(model))
    other = {n: torch.randn_like(p) * 0.3 for n, p in space.params(model).items()}
    x, y = _data()
    ref = model.state_dict()
    moved = build_model(ModelConfig(arch="cnn", hidden=[5], dtype="float64"), (1, 8, 8), 3)
    moved.load_state_dict({**ref, **other})
    wide = torch.full((len(x), 2 * space.size), float("nan"), dtype=torch.float64)
    with torch.no_grad():  # callers may hold no_grad (the hook path enables grad itself)
        per_sample_gradients(model, x, y, space, 4, params=other, out=wide[:, space.size:])
    assert torch.isnan(wide[:, :space.size]).all()
    assert (wide[:, space.size:] - per_sample_gradients_loop(moved, x, y, space)).abs().max() <= 1e-10
    assert torch.equal(model.state_dict()["0.weight"], ref["0.weight"])  # the module is untouched


class Custom(nn.Module):
    """A custom forward: the hook path cannot know that its rows are independent."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x.flatten(1))))


@pytest.mark.parametrize("case", ["custom", "train_bn", "layer_norm", "tied"])
def test_other_models_fall_back_to_vmap(case: str) -> None:
    torch.manual_seed(4)
    if case == "custom":
        model = Custom().double()
    elif case == "train_bn":  # training-mode BatchNorm mixes the batch: neither path is per-sample
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double()
        space = ParamSpace(model, select_parameters(model))
        assert hook_plan(model, space) is None
        model.eval()
        assert hook_plan(model, space) is not None  # the mode is read at every call
        return
    elif case == "layer_norm":
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.LayerNorm(5), nn.Linear(5, 3)).double()
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Linear(64, 3)).double()
        model[3].weight = model[1].weight
    _assert_loop(model, *_data(), hooked=False)


def test_first_call_does_not_import_torch_dynamo() -> None:
    """torch.func.grad imports torch._dynamo on its first call (~1 CPU-s); the hook path must not."""
    code = textwrap.dedent("""
        import sys, torch
        from precompute.config import ModelConfig
        from precompute.gradients import per_sample_gradients
        from precompute.models import build_model
        from precompute.params import ParamSpace, select_parameters
        m = build_model(ModelConfig(arch="cnn", hidden=[5]), (1, 8, 8), 3).eval()
        g = per_sample_gradients(m, torch.randn(6, 1, 8, 8), torch.zeros(6, dtype=torch.long),
                                 ParamSpace(m, select_parameters(m)))
        print(bool(g.abs().sum() > 0), "torch._dynamo" in sys.modules)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert res.stdout.split() == ["True", "False"]


def test_grad_function_signature_unchanged() -> None:
    torch.manual_seed(5)
    model = build_model(ModelConfig(arch="mlp", hidden=[4], dtype="float64"), (1, 8, 8), 3)
    space = ParamSpace(model, select_parameters(model))
    fn = create_per_sample_grad_function(model, space)
    x, y = _data(5)
    assert (fn(space.params(model), x, y) - per_sample_gradients_loop(model, x, y, space)).abs().max() <= 1e-10
