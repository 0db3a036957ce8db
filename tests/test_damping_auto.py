"""``damping = "auto"`` on tiny float64 models, checked against quantities computed independently.

K-FAC / EK-FAC / DataInf damp each layer by 0.1 x the mean of that layer's own eigenvalues (the
dense Kronecker product's spectrum, the explicit GGN block's trace, the layer's empirical Fisher);
the preconditioner then equals a dense solve with those per-layer shifts. Arnoldi's residual
eigenvalue is the mean eigenvalue of H on the complement of its kept eigenvectors, and its scores
stay close to ``exact`` when lambda is tiny (the old 1 / lambda residual collapsed there).
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jacrev

from precompute.hessian import create_hvp_function, explicit_hessian
from precompute.influence import get_estimator
from precompute.influence._toy import tiny_task
from precompute.influence.base import AUTO_DAMPING_SCALE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mlp():
    return tiny_task("mlp", damping="auto")


@pytest.fixture(scope="module")
def cnn():
    return tiny_task("cnn", damping="auto")


def ggn_matrix(task) -> torch.Tensor:
    """The explicit GGN ``[p, p]`` of the mean cross-entropy (no weight decay): J^T (diag p - p p^T) J."""
    model, space = task.model, task.space
    theta = space.flatten({n: p.detach() for n, p in model.named_parameters() if n in space.names})
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in space.names}

    def logits_of(t: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**frozen, **space.unflatten(t)}, (xi[None],))[0]

    jac = torch.stack([jacrev(logits_of)(theta, xi) for xi in task.x_train])  # [n, C, p]
    with torch.no_grad():
        p = torch.softmax(model(task.x_train), 1)
    lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", jac, lam, jac) / task.n_train


def layer_positions(f) -> list[int]:
    return sorted(f.layer.index().flatten().tolist())


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_kfac_auto_damping_is_a_tenth_of_each_layers_mean_kronecker_eigenvalue(mlp, cnn, arch):
    task = (mlp if arch == "mlp" else cnn)[0]
    est = get_estimator("kfac").fit(task)
    assert len(est.lams_) == len(est.factors_) >= 2
    for f, lam in zip(est.factors_, est.lams_, strict=True):
        dense = torch.kron(f.S, f.A)  # the layer's K-FAC block (ordering does not change its spectrum)
        assert lam == pytest.approx(AUTO_DAMPING_SCALE * float(torch.linalg.eigvalsh(dense).mean()), rel=1e-9)
    assert len({round(v, 12) for v in est.lams_}) == len(est.lams_)  # really per layer, not one global value


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_ekfac_auto_damping_is_a_tenth_of_each_layers_mean_corrected_eigenvalue(mlp, cnn, arch):
    """EK-FAC's corrected eigenvalues are the GGN diagonal in an orthonormal basis, so their mean is
    tr(GGN block) / p_l: computed here from the explicit GGN, independently of the fit."""
    task = (mlp if arch == "mlp" else cnn)[0]
    est = get_estimator("ekfac", {"fisher": "ggn"}).fit(task)
    ggn = ggn_matrix(task)
    for f, lam in zip(est.factors_, est.lams_, strict=True):
        flat = layer_positions(f)
        expected = AUTO_DAMPING_SCALE * float(ggn[flat][:, flat].diagonal().mean())
        assert lam == pytest.approx(expected, rel=1e-9), f.layer.name
        assert lam == pytest.approx(AUTO_DAMPING_SCALE * float(f.eig.mean()), rel=1e-12)
    assert est.damping_for(task) == pytest.approx(sum(est.lams_) / len(est.lams_))


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
def test_auto_preconditioner_equals_dense_solve_with_per_layer_shift(mlp, method):
    task = mlp[0]
    est = get_estimator(method).fit(task)
    g = task.gradients(task.x_train[:5], task.y_train[:5])
    pre = est.precondition(g)
    for f, lam in zip(est.factors_, est.lams_, strict=True):
        flat = layer_positions(f)
        qa, qs = f.qa, f.qs
        basis = torch.kron(qs, qa)  # columns: Kronecker eigenvectors of M [out, in'] flattened row-major
        idx = f.layer.index().flatten()  # flat positions of M's entries
        order = torch.tensor([flat.index(int(i)) for i in idx])
        dense_basis = torch.zeros_like(basis)
        dense_basis[order] = basis
        dense = dense_basis @ torch.diag(f.eig.flatten() + task.weight_decay + lam) @ dense_basis.T
        solved = torch.linalg.solve(dense, g[:, flat].T).T
        assert torch.allclose(pre[:, flat], solved, rtol=1e-8, atol=1e-10), f.layer.name


def test_kfac_number_damping_is_used_for_every_layer(mlp):
    est = get_estimator("kfac", {"damping": 0.03}).fit(mlp[0])
    assert est.lams_ == [0.03] * len(est.factors_) and est.damping_for(mlp[0]) == 0.03


def test_datainf_auto_damping_is_a_tenth_of_each_layers_mean_fisher_eigenvalue(mlp):
    task = mlp[0]
    est = get_estimator("datainf").fit(task)
    g = task.gradients(task.x_train, task.y_train).to(torch.float64)
    for name, s in task.space.layer_slices().items():
        fisher = g[:, s].T @ g[:, s] / task.n_train  # the layer's empirical Fisher G_l
        expected = AUTO_DAMPING_SCALE * float(torch.linalg.eigvalsh(fisher).mean())
        assert est.lams_[name] == pytest.approx(expected, rel=1e-9), name
    # and the closed form uses that layer's mu: the Sherman-Morrison terms by hand, per layer
    v = task.gradients(task.x_train[:3], task.y_train[:3]).to(torch.float64)
    q = est.query_factors(task.x_train[:3], task.y_train[:3]).to(torch.float64)
    for name, s in task.space.layer_slices().items():
        mu = task.weight_decay + est.lams_[name]
        gl = g[:, s]
        terms = [(v[:, s] - ((v[:, s] @ gi) / (mu + gi @ gi))[:, None] * gi[None]) / mu for gi in gl]
        assert torch.allclose(q[:, s], sum(terms) / task.n_train, rtol=1e-9, atol=1e-12), name


def _exact_hessian(task) -> torch.Tensor:
    hvp = create_hvp_function(task.model, task.space, task.x_train, task.y_train, task.weight_decay, task.batch_size)
    return explicit_hessian(hvp, task.space.size, dtype=torch.float64)


def test_arnoldi_residual_eigenvalue_is_the_mean_of_the_complement(mlp):
    task = mlp[0]
    est = get_estimator("arnoldi", {"n_iter": 40, "rank": 20, "residual": "mean", "residual_probes": 400,
                                    "damping": 1e-3}).fit(task)
    H = _exact_hessian(task)
    u = est.eigenvectors_
    proj = torch.eye(len(H), dtype=torch.float64) - u @ u.T
    expected = float(torch.trace(proj @ H @ proj)) / (len(H) - u.shape[1])
    assert est.residual_eigenvalue_ == pytest.approx(expected, rel=0.1)
    # the factors are exactly the low-rank inverse plus the scaled-identity residual
    g = task.gradients(task.x_train[:4], task.y_train[:4]).to(torch.float64)
    inv = (u / (est.eigenvalues_ + est.lam_)) @ u.T + proj / (est.residual_eigenvalue_ + est.lam_)
    q = est.query_factors(task.x_train[:4], task.y_train[:4]).to(torch.float64)
    assert torch.allclose(q, g @ inv, rtol=1e-9, atol=1e-12)


def test_arnoldi_gradient_residual_is_the_curvature_the_gradients_see_in_the_complement(mlp):
    """``residual_probes`` >= n: every training gradient is a probe, so mu_r is exactly
    sum_i (P g_i)^T H (P g_i) / sum_i |P g_i|^2, computed here with the explicit Hessian."""
    task = mlp[0]
    est = get_estimator("arnoldi", {"n_iter": 40, "rank": 20, "residual_probes": task.n_train, "damping": 1e-3})
    est.fit(task)
    assert est.config.residual == "gradient"  # the default
    H = _exact_hessian(task)
    u = est.eigenvectors_
    pg = task.gradients(task.x_train, task.y_train).to(torch.float64)
    pg = pg - (pg @ u) @ u.T
    expected = float(torch.einsum("ip,pq,iq->", pg, H, pg) / (pg * pg).sum())
    assert est.residual_eigenvalue_ == pytest.approx(expected, rel=1e-8)
    assert est.residual_eigenvalue_ > float(torch.linalg.eigvalsh(H)[0])


def test_hessian_auto_is_a_tenth_of_the_mean_eigenvalue_or_twice_the_negative_curvature(mlp, cnn):
    """Tiny CNN: H is positive definite, so "auto" = 0.1 tr(H) / p (Hutchinson: within 25%). Tiny MLP:
    H has a negative eigenvalue larger than that lambda, so "auto" = 2 |lambda_min(H)| (Lanczos), and
    H + lambda I is positive definite: exact fits with "auto" where 0.1 x the mean eigenvalue fails."""
    from precompute.errors import MethodError
    from precompute.influence.base import AUTO_DAMPING_NEGATIVE_MARGIN, auto_damping

    for task, convex in ((tiny_task("cnn", damping="auto")[0], True), (tiny_task("mlp", damping="auto")[0], False)):
        evals = torch.linalg.eigvalsh(_exact_hessian(task))
        lam = auto_damping(task)
        mean_rule = AUTO_DAMPING_SCALE * float(evals.mean())
        if convex:
            assert float(evals[0]) > 0 and abs(lam - mean_rule) <= 0.25 * mean_rule
        else:
            assert -float(evals[0]) > mean_rule  # the case the negative-curvature part is for
            assert lam == pytest.approx(AUTO_DAMPING_NEGATIVE_MARGIN * -float(evals[0]), rel=0.02)
            with pytest.raises(MethodError, match="positive definite"):
                get_estimator("exact", {"damping": mean_rule}).fit(task)
        assert float(evals[0]) + lam > 0
        assert get_estimator("exact").fit(task).damping_for(task) == lam  # cached: one value per run


def _spearman_rows(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort(1).argsort(1).double(), b.argsort(1).argsort(1).double()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return float(((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))).mean())


def test_arnoldi_does_not_collapse_with_tiny_damping(mlp):
    """rank 20 of p = 75, lambda = 1e-6: the estimated residual eigenvalue keeps scores close to exact (at the
    smallest lambda where this non-convex H + lambda I is positive definite), far closer than the
    1 / lambda residual, which degenerates towards gradient dot."""
    task, xs, ys = mlp
    exact = get_estimator("exact", {"damping": 0.02}).fit(task)
    ref = exact.query_factors(xs, ys) @ exact.train_factors(task.x_train, task.y_train).T

    def scores(residual: str | None) -> torch.Tensor:
        opts = {"n_iter": 40, "rank": 20, "damping": 1e-6} | ({"residual": residual} if residual else {})
        est = get_estimator("arnoldi", opts).fit(task)
        return est.query_factors(xs, ys).double() @ est.train_factors(task.x_train, task.y_train).double().T

    old = _spearman_rows(scores("damping"), ref)
    for residual in (None, "mean"):  # the default ("gradient") and the plain mean eigenvalue
        new = _spearman_rows(scores(residual), ref)
        assert new > 0.75 and new > old + 0.1, residual


def test_damping_sweep_scores_auto_on_the_same_test_points(logreg_run, tmp_path):
    """The sweep's ``auto_lds`` is the LDS at the lambda "auto" resolves to (here exact's 0.1 tr(H)/p,
    put on the grid), on the same test points; K-FAC's per-layer "auto" is scored too."""
    from helpers import QUIET, copy_run

    from precompute.evaluation import (
        AgreementSettings,
        BrittlenessSettings,
        DampingSettings,
        EvalSettings,
        LDSSettings,
        LOOSettings,
        evaluate_run,
    )
    from precompute.evaluation.context import RunContext
    from precompute.influence import InfluenceTask
    from precompute.influence.base import auto_damping
    from precompute.params import ParamSpace, select_parameters

    run = copy_run(logreg_run, tmp_path)
    ctx = RunContext.load(run)
    model = ctx.model()
    task = InfluenceTask(model=model, space=ParamSpace(model, select_parameters(model, ctx.cfg.influence.params)),
                         x_train=ctx.x_train, y_train=ctx.y_train, weight_decay=ctx.cfg.train.weight_decay,
                         damping="auto", batch_size=ctx.cfg.influence.train_batch_size)
    lam = auto_damping(task)
    settings = EvalSettings(methods=["exact", "kfac"], workers=1, lds=LDSSettings(subsets=8, bootstrap=0),
                            loo=LOOSettings(enabled=False), brittleness=BrittlenessSettings(enabled=False),
                            damping=DampingSettings(grid=[lam, 1.0], tests=20), agreement=AgreementSettings(enabled=False))
    res = evaluate_run(run, settings, **QUIET).results["damping"]["methods"]
    exact = res["exact"]
    assert exact["auto_error"] is None
    assert exact["auto_lds"] == pytest.approx(dict(zip(exact["grid"], exact["lds"], strict=True))[lam], abs=1e-9)
    assert res["kfac"]["auto_lds"] is not None and -1.0 <= res["kfac"]["auto_lds"] <= 1.0
