"""precompute.compression: factored (LoGra) and dropout compressors against explicit references."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from precompute.compression import CompressionConfig, GradientCompressor
from precompute.errors import ConfigError, MethodError
from precompute.gradients import per_sample_gradients, per_sample_gradients_loop
from precompute.influence._toy import tiny_task
from precompute.params import ParamSpace, select_parameters

F64 = torch.float64


class Twice(nn.Module):
    """A shared Linear called twice, a parameter used by the parent's own forward, a frozen-bias
    Linear, a LayerNorm and a BatchNorm1d: global, local and hooks paths in one model."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 12)
        self.norm = nn.LayerNorm(12)
        self.shared = nn.Linear(12, 12)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 12))
        self.big = nn.Linear(12, 9)
        self.big.bias.requires_grad_(False)
        self.bn = nn.BatchNorm1d(9)  # eval mode, running statistics: the closed-form local path
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.out = nn.Linear(9, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.norm(self.inp(x)))
        h = torch.tanh(self.shared(torch.tanh(self.shared(h)))) * self.scale
        return self.out(torch.relu(self.bn(self.big(h))))


def _model(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Seeded float64 models in eval mode with a batch ``x [9, ...], y [9]``."""
    torch.manual_seed(0)
    image = torch.randn(9, 2, 7, 7, dtype=F64)
    if name == "linear_bias":
        m, x = nn.Sequential(nn.Linear(6, 4)), torch.randn(9, 6, dtype=F64)
    elif name == "linear_nobias":
        m, x = nn.Sequential(nn.Linear(6, 4, bias=False)), torch.randn(9, 6, dtype=F64)
    elif name == "conv_bias":  # padding and stride
        m, x = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(48, 4)), image
    elif name == "conv_nobias":
        m, x = nn.Sequential(nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 0), bias=False), nn.Flatten(),
                             nn.Linear(72, 4)), image
    elif name == "conv_dilated":  # dilation: the unfold fallback for patches and taps
        m, x = nn.Sequential(nn.Conv2d(2, 3, 3, dilation=2, padding=2, stride=2), nn.Flatten(), nn.Linear(48, 4)), image
    elif name == "cnn_bn":  # BatchNorm (eval) + in-place ReLU after it: local path, cloned output
        m, x = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                             nn.Conv2d(4, 3, 3, stride=2), nn.Flatten(), nn.Linear(27, 4)), image
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
    elif name == "twice":
        m, x = Twice(), torch.randn(9, 5, dtype=F64)
    else:
        task, x, _ = tiny_task(name, n_train=20, n_test=9, epochs=3)
        m = task.model
    m = m.to(F64).eval()
    n_cls = m(x[:1]).shape[1]
    return m, x, torch.arange(len(x)) % n_cls


def _space(m: nn.Module) -> ParamSpace:
    return ParamSpace(m, select_parameters(m))


def _make(m: nn.Module, x: torch.Tensor, **kw) -> GradientCompressor:
    kw = {"kind": "factored", "dim": 24, "dense_below": 0, "dtype": "float64", **kw}
    return GradientCompressor.create(CompressionConfig(**kw), m, _space(m), x[:2])


MODELS = ["linear_bias", "linear_nobias", "conv_bias", "conv_nobias", "conv_dilated", "mlp", "cnn", "cnn_bn", "twice"]


@pytest.mark.parametrize("kind", ["factored", "dropout"])
@pytest.mark.parametrize("name", MODELS)
def test_compress_equals_dense_reference(name: str, kind: str):
    m, x, y = _model(name)
    space = _space(m)
    explicit = per_sample_gradients_loop(m, x, y, space)
    for i, dims in enumerate(({"dim": 12}, {"dim": 24, "dense_below": 30}, {"dim": 3 * len(space.names)})):
        comp = _make(m, x, kind=kind, **dims)
        got = comp.compress(m, x, y)
        assert got.shape == (len(x), comp.dim) and comp.dim <= dims["dim"]
        torch.testing.assert_close(got, comp.project_dense(explicit), rtol=0, atol=1e-10)
        if i == 0:  # every Linear/Conv2d layer is factored here, at least one side really projected
            assert any(g["kind"] == kind for g in comp.layout())
            assert any(g.get(s, "identity") != "identity" for g in comp.layout() for s in ("side_out", "side_in"))


def test_paths_of_the_mixed_models():
    paths = {g["name"]: (g["path"], g["kind"]) for g in _make(*_model("twice")[:2], dim=60).layout()}
    assert paths["shared"][0] == "global" and paths[""][0] == "global"  # called twice / parent's own param
    assert paths["norm"][0] == "local" and paths["inp"] == ("hooks", "factored")
    assert paths["big"] == ("hooks", "factored")  # frozen bias: weight only, no ones column
    cnn = _make(*_model("cnn_bn")[:2], dense_below=20).layout()
    assert [(g["name"], g["path"]) for g in cnn] == [("0", "hooks"), ("1", "local"), ("3", "hooks"), ("5", "hooks")]
    assert cnn[1]["kind"] == "dense" and cnn[1]["k"] == 6  # 8 parameters > the share of dim 24 / 4
    m = nn.Sequential(nn.Linear(6, 4)).to(F64)
    partial = GradientCompressor.create(CompressionConfig(kind="factored", dense_below=0), m,
                                        ParamSpace(m, ["0.weight"]), torch.zeros(2, 6, dtype=F64)).layout()
    assert partial[0]["path"] == "local"  # trainable bias outside the space: dense path
    bad = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4, track_running_stats=False)).to(F64)
    with pytest.raises(MethodError, match="batch statistics"):
        _make(bad, torch.zeros(2, 6, dtype=F64))


@pytest.mark.parametrize("kind", ["factored", "dropout", "none"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn_bn", "conv_dilated", "twice"])
def test_no_compression_is_exact(name: str, kind: str):
    m, x, y = _model(name)
    space = _space(m)
    exact = per_sample_gradients(m, x, y, space)
    comp = _make(m, x, kind=kind, dim=10**6)
    got = comp.compress(m, x, y)
    assert comp.dim == space.size and all(
        g["kind"] in ("identity", kind) and g.get("side_out", "identity") == g.get("side_in", "identity") == "identity"
        for g in comp.layout())
    torch.testing.assert_close(got @ got.T, exact @ exact.T, rtol=0, atol=1e-10)
    torch.testing.assert_close(got.sort(dim=1).values, exact.sort(dim=1).values, rtol=0, atol=1e-12)  # a permutation
    if kind == "none":
        torch.testing.assert_close(got, exact, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["factored", "dropout"])
def test_inner_products_preserved_in_expectation(kind: str):
    m, x, _ = _model("mlp")  # 8 -> 6 -> 3: layers "1" [6, 9] and "3" [3, 7]
    space = _space(m)
    gen = torch.Generator().manual_seed(5)
    u, v = torch.randn(2, space.size, generator=gen, dtype=F64).unbind(0)
    v = 0.6 * u + 0.8 * v
    vals = []
    for seed in range(400):
        comp = _make(m, x, kind=kind, dim=20, seed=seed)
        pu, pv = comp.project_dense(torch.stack([u, v]))
        vals.append(float(pu @ pv))
    vals_t = torch.tensor(vals, dtype=F64)
    err = abs(float(vals_t.mean()) - float(u @ v))
    assert err < 4 * float(vals_t.std()) / len(vals) ** 0.5 + 1e-9
    assert float(vals_t.std()) > 0.01 * float(u.norm() * v.norm())  # really random: k < p


@pytest.mark.parametrize("kind", ["factored", "dropout"])
def test_chunking_reproducibility_and_seed(kind: str):
    m, x, y = _model("cnn_bn")
    comp = _make(m, x, kind=kind, dense_below=20)
    full = comp.compress(m, x, y)
    for size in (1, 4):
        parts = torch.cat([comp.compress(m, x[s:s + size], y[s:s + size]) for s in range(0, len(x), size)])
        torch.testing.assert_close(parts, full, rtol=1e-12, atol=1e-14)
    again = _make(m, x, kind=kind, dense_below=20)
    assert torch.equal(again.compress(m, x, y), full)
    again.max_batch = 4  # micro-batches: same as chunks of 4, bit for bit
    micro = again.compress(m, x, y)
    assert torch.equal(micro, torch.cat([again.compress(m, x[s:s + 4], y[s:s + 4]) for s in range(0, len(x), 4)]))
    torch.testing.assert_close(micro, full, rtol=1e-12, atol=1e-14)
    assert comp.compress(m, x[:0], y[:0]).shape == (0, comp.dim)
    assert again.fingerprint() == comp.fingerprint()
    other = _make(m, x, kind=kind, dense_below=20, seed=1)
    assert not torch.allclose(other.compress(m, x, y), full)
    assert other.fingerprint() != comp.fingerprint()


def test_fingerprint_changes_with_config_and_model():
    m, x, _ = _model("mlp")
    base = _make(m, x).fingerprint()
    assert _make(m, x, dim=23).fingerprint() != base
    assert _make(m, x, kind="dropout").fingerprint() != base
    assert _make(m, x, dtype="float32").fingerprint() != base
    m2, x2, _ = _model("cnn")
    assert _make(m2, x2).fingerprint() != base
    summ = _make(m, x).summary()
    assert summ["k"] == 24 and summ["p"] == 75 and summ["fingerprint"] == base and sum(summ["groups"].values()) == 2


@pytest.mark.parametrize("kind", ["factored", "dropout", "none"])
def test_checkpoint_params_leave_the_model_unchanged(kind: str):
    task, x, y = tiny_task("cnn", n_train=20, n_test=9, epochs=3)
    m = task.model.train()
    before = {n: t.clone() for n, t in m.state_dict().items()}
    params = task.checkpoint_params(task.checkpoints[0])
    comp = GradientCompressor.create(CompressionConfig(kind=kind, dim=30, dense_below=0, dtype="float64"),
                                     m, task.space, x[:2])
    got = comp.compress(m, x, y, params=params)
    ref = comp.project_dense(per_sample_gradients(m.eval(), x, y, task.space, params=params))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    assert not torch.allclose(got, comp.compress(m, x, y))  # the final model's gradients differ
    assert all(torch.equal(before[n], t) for n, t in m.state_dict().items())
    m.train()
    comp.compress(m, x, y, params=params)
    assert m.training and all(mod.training for mod in m.modules())  # mode restored


def test_out_and_dtypes():
    m, x, y = _model("cnn")
    comp = _make(m, x, dtype="float32")
    ref = _make(m, x).compress(m, x, y)
    buf = torch.full((len(x), comp.dim), float("nan"))
    got = comp.compress(m, x, y, out=buf)
    assert got is buf and got.dtype == torch.float32
    torch.testing.assert_close(got, ref.float(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="out must be"):
        comp.compress(m, x, y, out=torch.empty(len(x), comp.dim, dtype=F64))
    m32, x32 = _model("mlp")[0].float(), torch.randn(4, 8)
    c32 = _make(m32, x32, dtype="float64")
    assert c32.compress(m32, x32, torch.zeros(4, dtype=torch.long)).dtype == F64


@pytest.mark.parametrize(("field", "value"), [
    ("kind", "logra"), ("dim", 0), ("dim", 2.5), ("dim", True), ("seed", -1), ("dense_below", -3),
    ("dtype", "float16"), ("layer_dims", [3, 4]), ("layer_dims", {"0": [3, 0]}), ("layer_dims", {"0": [1, 2, 3]}),
])
def test_config_errors_name_the_field(field: str, value):
    with pytest.raises(ConfigError, match=rf"influence\.compression\.{field}"):
        CompressionConfig(**{field: value}).validate()
    assert CompressionConfig().validate().to_dict()["kind"] == "none"


@pytest.mark.parametrize(("kw", "match"), [
    ({"layer_dims": {"nope": 3}}, r"layer_dims\.nope: no such parameter group"),
    ({"layer_dims": {"1": [7, 2]}}, r"layer_dims\.1: \[7, 2\] exceeds"),
    ({"layer_dims": {"3": [2, 2]}, "dense_below": 30}, r"layer_dims\.3: \[k_out, k_in\] is only for"),
    ({"dim": 1}, r"influence\.compression\.dim: 1 leaves"),
])
def test_create_errors_name_the_field(kw: dict, match: str):
    m, x, _ = _model("mlp")
    with pytest.raises(ConfigError, match=match):
        _make(m, x, **kw)


def test_layer_dims_overrides():
    m, x, y = _model("mlp")  # layer "1": [6, 9], layer "3": [3, 7] (21 params)
    comp = _make(m, x, dim=30, layer_dims={"1": [2, 5]})
    lay = {g["name"]: g for g in comp.layout()}
    assert (lay["1"]["k_out"], lay["1"]["k_in"], lay["1"]["columns"]) == (2, 5, [0, 10])
    # the rest of dim, 20: k_out = floor(sqrt(20)) = 4 capped to d_out 3, k_in = floor(20 / 3) = 6
    assert (lay["3"]["k_out"], lay["3"]["k_in"], lay["3"]["columns"]) == (3, 6, [10, 28])
    dense = _make(m, x, dim=30, dense_below=60, layer_dims={"3": 21}).layout()
    assert dense[1]["kind"] == "identity" and dense[0]["k"] == 9 and dense[0]["kind"] == "dense"


def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def test_big_linear_never_materialises_per_sample_gradients():
    try:
        _reset_hwm()
    except OSError:
        pytest.skip("peak RSS cannot be reset here (/proc/self/clear_refs)")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10)).eval()
    space = _space(m)
    b = 64
    x, y = torch.randn(b, 2048), torch.arange(b) % 10
    comp = GradientCompressor.create(CompressionConfig(kind="factored", dim=1024 + 160,
                                                       layer_dims={"0": [32, 32]}), m, space, x[:2])
    assert [g["path"] for g in comp.layout()] == ["hooks", "hooks"]
    comp.compress(m, x[:2], y[:2])  # warm-up: one-time allocations, matrices cached
    budget = 0.5 * b * space.size * 4
    _reset_hwm()
    base = _hwm_kb()
    got = comp.compress(m, x, y)
    grew = (_hwm_kb() - base) * 1024
    assert got.shape == (b, comp.dim) and torch.isfinite(got).all()
    assert grew < budget, f"peak RSS grew {grew / 2**20:.0f} MiB (a [b, p] float32 is {b * space.size * 4 / 2**20:.0f})"
    _reset_hwm()  # control: the measurement does see a [b, p] tensor
    base = _hwm_kb()
    dense = torch.ones(b, space.size)
    assert (_hwm_kb() - base) * 1024 > 0.9 * dense.numel() * 4
    del dense


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_fast_enough_smoke():
    """The compressor is usable at a realistic size (no quadratic blow-up): a 60k-parameter CNN, batch 32."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                      nn.ReLU(), nn.Flatten(), nn.Linear(64 * 8 * 8, 10)).eval()
    x, y = torch.randn(32, 3, 16, 16), torch.arange(32) % 10
    comp = GradientCompressor.create(CompressionConfig(kind="factored"), m, _space(m), x[:2])
    assert comp.compress(m, x, y).shape == (32, comp.dim) and comp.dim <= 4096
