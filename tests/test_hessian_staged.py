"""The staged explicit Hessian (``hessian.staged_hessian``) equals p HVPs of the whole model."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from precompute.hessian import (
    create_hvp_function,
    explicit_hessian,
    sequential_stages,
    staged_hessian,
)
from precompute.influence._toy import blobs, tiny_task
from precompute.params import ParamSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference(model, space, x, y, wd):
    return explicit_hessian(create_hvp_function(model, space, x, y, wd, batch_size=7), space.size, torch.float64)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_staged_hessian_equals_the_full_hvp_hessian(arch):
    task, _, _ = tiny_task(arch)
    ref = _reference(task.model, task.space, task.x_train, task.y_train, task.weight_decay)
    got = staged_hessian(task.model, task.space, task.x_train, task.y_train, task.weight_decay, batch_size=7)
    assert got is not None and len(sequential_stages(task.model, task.space)) >= 2
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12 * float(ref.abs().max()))


def test_named_children_a_parameter_subset_and_an_interleaved_order():
    x, y = blobs(30, dim=4)
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(inp=nn.Linear(4, 5), act=nn.Tanh(), mid=nn.Linear(5, 5), act2=nn.Tanh(),
                                      out=nn.Linear(5, 3))).to(torch.float64)
    space = ParamSpace(model, ["out.bias", "inp.weight", "out.weight", "mid.weight"])  # mid.bias frozen
    ref = _reference(model, space, x, y, 1e-2)
    got = staged_hessian(model, space, x, y, 1e-2, batch_size=7)
    assert got is not None
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12 * float(ref.abs().max()))


def test_models_without_stages_take_the_generic_path():
    lin = nn.Linear(4, 3).to(torch.float64)
    x, y = blobs(10, dim=4)
    assert staged_hessian(lin, ParamSpace(lin, ["weight", "bias"]), x, y, 0.0) is None  # not a Sequential
    shared = nn.Linear(3, 3)
    seq = nn.Sequential(nn.Linear(4, 3), shared, nn.Tanh(), shared).to(torch.float64)
    assert sequential_stages(seq, ParamSpace(seq, [n for n, _ in seq.named_parameters()])) is None
    one = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).to(torch.float64)
    assert staged_hessian(one, ParamSpace(one, ["1.weight", "1.bias"]), x, y, 0.0) is None  # one stage
