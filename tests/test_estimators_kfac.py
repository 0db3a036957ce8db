"""K-FAC / EK-FAC defining properties on tiny float64 models (MLP: Linear; CNN: Conv2d + Linear).

They are approximations even for one layer, so instead of agreement with exact we check: the
Kronecker factors equal directly computed covariances; EK-FAC's eigenvalues equal the diagonal of
the explicit GGN in the Kronecker eigenbasis; the preconditioner equals a dense solve with those
eigenvalues; per-layer scores sum to the total; unsupported layers are named in the error.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from precompute.errors import MethodError
from precompute.influence import InfluenceTask, get_estimator
from precompute.influence._kron import _patches
from precompute.influence._toy import tiny_task
from precompute.influence.runner import compute_train_factors
from precompute.params import ParamSpace, select_parameters

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mlp():
    return tiny_task("mlp", damping=0.1)


@pytest.fixture(scope="module")
def cnn():
    return tiny_task("cnn", damping=0.1)


def out_hessians(logits: torch.Tensor, y: torch.Tensor, fisher: str) -> torch.Tensor:
    """Per-sample curvature on the logits ``[n, C, C]``: diag(p) - p p^T (GGN) or r r^T (empirical)."""
    p = torch.softmax(logits, 1)
    if fisher == "ggn":
        return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    r = p - nn.functional.one_hot(y, p.shape[1]).to(p.dtype)
    return r[:, :, None] * r[:, None, :]


@pytest.mark.parametrize("fisher", ["ggn", "empirical"])
def test_mlp_factors_equal_direct_covariances(mlp, fisher):
    task, _, _ = mlp
    est = get_estimator("kfac", {"fisher": fisher}).fit(task)
    lin1, lin2 = task.model[1], task.model[3]
    x, y = task.x_train, task.y_train
    with torch.no_grad():
        s1 = x @ lin1.weight.T + lin1.bias
        h = torch.tanh(s1)
        logits = h @ lin2.weight.T + lin2.bias
    ones = torch.ones(len(x), 1, dtype=x.dtype)
    a1, a2 = torch.cat([x, ones], 1), torch.cat([h, ones], 1)
    lam = out_hessians(logits, y, fisher)  # [n, C, C]
    j1 = lin2.weight[None] * (1 - h ** 2)[:, None, :]  # d logits / d s1, [n, C, hidden]
    s1_direct = torch.einsum("nci,ncd,ndj->ij", j1, lam, j1) / len(x)
    s2_direct = lam.mean(0)  # d logits / d s2 = I
    f1, f2 = est.factors_
    assert torch.allclose(f1.A, a1.T @ a1 / len(x), atol=1e-12)
    assert torch.allclose(f2.A, a2.T @ a2 / len(x), atol=1e-12)
    assert torch.allclose(f1.S, s1_direct, atol=1e-12)
    assert torch.allclose(f2.S, s2_direct, atol=1e-12)


def test_conv_factors_equal_direct_covariances(cnn):
    task, _, _ = cnn
    est = get_estimator("kfac", {"fisher": "ggn"}).fit(task)
    conv1 = task.model[0]
    x = task.x_train
    xp = nn.functional.pad(x, (1, 1, 1, 1))
    patches = torch.stack([xp[:, 0, i:i + 3, j:j + 3].reshape(len(x), -1) for i in range(6) for j in range(6)], 1)
    a = torch.cat([patches, torch.ones(len(x), 36, 1, dtype=x.dtype)], 2)  # [n, L=36, 10]
    a_direct = torch.einsum("nli,nlj->ij", a, a) / (len(x) * 36)
    with torch.no_grad():
        out1 = conv1(x)
        logits = task.model(x)
    rest = task.model[1:]
    jac = torch.stack([jacrev(lambda o: rest(o[None])[0])(out1[i]) for i in range(len(x))])  # [n, C, 2, 6, 6]
    jac = jac.reshape(len(x), 3, 2, 36)
    lam = out_hessians(logits, task.y_train, "ggn")
    s_direct = torch.einsum("ncol,ncd,ndql->oq", jac, lam, jac) / len(x)  # sum over positions
    f1 = est.factors_[0]
    assert torch.allclose(f1.A, a_direct, atol=1e-12)
    assert torch.allclose(f1.S, s_direct, atol=1e-12)


def explicit_ggn(task: InfluenceTask) -> torch.Tensor:
    """(1/n) sum_i J_i^T (diag p_i - p_i p_i^T) J_i over all influence parameters, ``[p, p]``."""
    space, model = task.space, task.model
    frozen = space.frozen(model)
    theta = space.flatten(space.params(model))

    def logits_of(t: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**frozen, **space.unflatten(t)}, (xi[None],))[0]

    jac = torch.stack([jacrev(logits_of)(theta, xi) for xi in task.x_train])  # [n, C, p]
    with torch.no_grad():
        lam = out_hessians(model(task.x_train), task.y_train, "ggn")
    return torch.einsum("ncp,ncd,ndq->pq", jac, lam, jac) / task.n_train


def kron_basis(f) -> torch.Tensor:
    """Columns: the Kronecker eigenvectors of a layer laid out in flat layer order, ``[p_l, p_l]``."""
    idx = f.layer.index()
    pos = {int(v): k for k, v in enumerate(sorted(idx.flatten().tolist()))}
    local = torch.tensor([[pos[int(v)] for v in row] for row in idx])
    basis = torch.zeros(idx.numel(), idx.numel(), dtype=torch.float64)
    col = 0
    for o in range(f.qs.shape[1]):
        for a in range(f.qa.shape[1]):
            vec = torch.zeros(idx.numel(), dtype=torch.float64)
            vec[local.flatten()] = torch.outer(f.qs[:, o], f.qa[:, a]).flatten()
            basis[:, col] = vec
            col += 1
    return basis, sorted(idx.flatten().tolist())


@pytest.mark.parametrize(("arch", "replay_mb"), [("mlp", 512), ("cnn", 512), ("cnn", 0)])
def test_ekfac_eigenvalues_are_ggn_diagonal_in_kronecker_basis(mlp, cnn, arch, replay_mb):
    task = (mlp if arch == "mlp" else cnn)[0]
    est = get_estimator("ekfac", {"fisher": "ggn", "replay_mb": replay_mb}).fit(task)
    assert est.fit_info()["passes"] == (1 if replay_mb else 2)
    ggn = explicit_ggn(task)
    for f in est.factors_:
        basis, flat = kron_basis(f)
        block = ggn[flat][:, flat]
        diag = torch.einsum("pk,pq,qk->k", basis, block, basis)
        assert torch.allclose(f.eig.flatten(), diag, rtol=1e-9, atol=1e-12), f.layer.name


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_preconditioner_equals_dense_solve(mlp, cnn, method, arch):
    task = (mlp if arch == "mlp" else cnn)[0]
    est = get_estimator(method).fit(task)
    g = task.gradients(task.x_train[:5], task.y_train[:5])
    pre = est.precondition(g)
    shift = task.weight_decay + est.damping_for(task)
    for f in est.factors_:
        basis, flat = kron_basis(f)
        dense = basis @ torch.diag(f.eig.flatten() + shift) @ basis.T
        solved = torch.linalg.solve(dense, g[:, flat].T).T
        assert torch.allclose(pre[:, flat], solved, rtol=1e-8, atol=1e-10), f.layer.name
    if method == "kfac":  # K-FAC eigenvalues are the Kronecker products of the factors' eigenvalues
        f = est.factors_[0]
        assert torch.allclose(f.eig, torch.outer(f.ls, f.la))


def test_sampled_fisher_is_an_unbiased_estimate_of_the_ggn():
    """Each sample repeated 200 times: the sampled-label factors approach the exact-GGN ones (a model
    trained 2 epochs, so its predictions are not near one-hot and the draws vary)."""
    task, _, _ = tiny_task("cnn", damping=0.1, epochs=2)
    big = InfluenceTask(task.model, task.space, task.x_train.repeat(200, 1, 1, 1), task.y_train.repeat(200),
                        task.weight_decay, task.damping, batch_size=4000)
    exact = get_estimator("ekfac", {"fisher": "ggn"}).fit(task).factors_
    sampled = get_estimator("ekfac", {"fisher": "sampled", "seed": 3}).fit(big).factors_
    for fe, fs in zip(exact, sampled, strict=True):
        assert torch.allclose(fs.A, fe.A, atol=1e-12)  # activations do not depend on the labels
        assert (fs.S - fe.S).norm() < 0.03 * fe.S.norm(), fe.layer.name
        assert (fs.eig - fe.eig).norm() < 0.06 * fe.eig.norm(), fe.layer.name


def test_sampled_fisher_is_seeded_and_replay_matches_a_second_pass(mlp):
    task, _, _ = mlp
    fit = lambda **kw: get_estimator("ekfac", {"fisher": "sampled", **kw}).fit(task)  # noqa: E731
    one, again, other = fit(seed=1), fit(seed=1), fit(seed=2)
    two_pass = fit(seed=1, replay_mb=0)
    assert (one.fit_info()["passes"], two_pass.fit_info()["passes"]) == (1, 2)
    for a, b, c, d in zip(one.factors_, again.factors_, other.factors_, two_pass.factors_, strict=True):
        assert torch.equal(a.S, b.S) and torch.equal(a.eig, b.eig)
        assert not torch.allclose(a.S, c.S)
        assert torch.allclose(a.eig, d.eig, rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
def test_per_layer_scores_sum_to_total(mlp, method):
    task, xs, ys = mlp
    est = get_estimator(method).fit(task)
    q = est.query_factors(xs, ys)
    t = compute_train_factors(est, task, 16)
    parts = est.layer_scores(q, t)
    assert set(parts) == {"1", "3"}
    assert torch.allclose(sum(parts.values()), est.scores(q, t), atol=1e-12)
    assert all(v.abs().sum() > 0 for v in parts.values())


@pytest.mark.parametrize("layer", [nn.BatchNorm1d(6), nn.LayerNorm(6)])
def test_unsupported_layer_is_named(layer):
    model = nn.Sequential(nn.Linear(4, 6), layer, nn.Tanh(), nn.Linear(6, 3)).double()
    space = ParamSpace(model, select_parameters(model))
    x = torch.randn(10, 4, dtype=torch.float64)
    task = InfluenceTask(model, space, x, torch.arange(10) % 3, 1e-3, 0.1)
    for method in ("kfac", "ekfac"):
        with pytest.raises(MethodError, match=f"layer '1' \\({type(layer).__name__}\\)"):
            get_estimator(method).fit(task)


def test_unsupported_layer_excluded_by_params_works():
    model = nn.Sequential(nn.Embedding(5, 4), nn.Flatten(), nn.Linear(8, 3)).double()
    space = ParamSpace(model, select_parameters(model, "last_layer"))
    x = torch.randint(0, 5, (12, 2))
    task = InfluenceTask(model, space, x, torch.arange(12) % 3, 1e-3, 0.1)
    est = get_estimator("ekfac").fit(task)
    assert [f.layer.name for f in est.factors_] == ["2"]
    full = InfluenceTask(model, ParamSpace(model, select_parameters(model)), x, task.y_train, 1e-3, 0.1)
    with pytest.raises(MethodError, match="'0' \\(Embedding\\)"):
        get_estimator("ekfac").fit(full)


@pytest.mark.parametrize("cfg", [{"kernel_size": 3, "padding": 1}, {"kernel_size": (3, 2), "padding": (1, 0), "stride": (2, 1)},
                                 {"kernel_size": 2, "stride": 2}, {"kernel_size": 3, "dilation": 2, "padding": 2}])
def test_conv_patches_equal_unfold(cfg):
    conv = nn.Conv2d(3, 4, **cfg)
    x = torch.randn(5, 3, 9, 7)
    ref = nn.functional.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    assert torch.equal(_patches(x, conv), ref.transpose(1, 2))


def test_auto_fisher_is_the_exact_ggn_for_few_classes_and_sampled_for_many(mlp):
    task, _, _ = mlp
    auto, ggn = get_estimator("ekfac").fit(task), get_estimator("ekfac", {"fisher": "ggn"}).fit(task)
    assert auto.config.fisher == "auto" and auto.fit_info()["fisher"] == "ggn"
    for a, b in zip(auto.factors_, ggn.factors_, strict=True):
        assert torch.equal(a.S, b.S) and torch.equal(a.eig, b.eig)
    wide = nn.Sequential(nn.Linear(8, 20)).to(torch.float64)
    many = InfluenceTask(wide, ParamSpace(wide, select_parameters(wide)), task.x_train, task.y_train % 20,
                         task.weight_decay, task.damping)
    assert get_estimator("kfac").fit(many).fit_info()["fisher"] == "sampled"
