"""The seed's remaining methods, each against the property that defines it (tiny float64 models):

- Z0-Inf: its closed form on a quadratic objective (central differences are exact there);
- Forward-INF: sign and ranking against exact on logistic regression;
- data value embedding: an explicit re-run of the recorded SGD/Adam trajectory with PyTorch's own
  optimizers, the sample's weight perturbed (derivative to 1e-6) and the sample removed;
- datamodels: recovery of a planted linear datamodel, and the fit on a real ``evaluate`` cache.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from cache_format.metrics import mean_spearman
from precompute.config import ModelConfig, TrainConfig
from precompute.errors import ConfigError, MethodError
from precompute.influence import InfluenceTask, get_estimator
from precompute.influence._toy import blobs, tiny_task
from precompute.influence.datamodels import fit_datamodels, heldout_fit
from precompute.influence.runner import (
    compute_scores,
    compute_self_influence,
    compute_train_factors,
)
from precompute.models import build_model
from precompute.params import ParamSpace, select_parameters
from precompute.training import Checkpoint, l2_penalty, train_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------- Z0-Inf
def _quadratic_task() -> tuple[InfluenceTask, torch.Tensor, torch.Tensor]:
    """A linear model under a squared loss (quadratic in the parameters), 3 hand-made checkpoints."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2).to(torch.float64)
    x, y = blobs(20, n_classes=2, dim=4)

    def sq_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        onehot = (target[:, None] == torch.arange(2, device=target.device)).to(out.dtype)  # vmap-safe one-hot
        return 0.5 * ((out - onehot) ** 2).sum(1)

    ckpts = []
    for c in range(3):
        gen = torch.Generator().manual_seed(10 + c)
        ckpts.append(Checkpoint(epoch=c + 1, lr=0.1 / (c + 1), state_dict={
            n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in model.named_parameters()}))
    model.load_state_dict(ckpts[-1].state_dict)
    space = ParamSpace(model, select_parameters(model))
    task = InfluenceTask(model=model, space=space, x_train=x[:14], y_train=y[:14], weight_decay=0.0, damping=0.0,
                         checkpoints=ckpts, loss_fn=sq_loss)
    return task, x[14:], y[14:]


def _checkpoint_grads(task: InfluenceTask, x, y) -> list[torch.Tensor]:
    return [task.gradients(x, y, task.checkpoint_params(c)) for c in task.checkpoints]


def test_z0inf_with_a_full_basis_is_tracin_in_closed_form_on_a_quadratic():
    task, xs, ys = _quadratic_task()  # p = 10
    est = get_estimator("z0inf", {"directions": 64})
    s = compute_scores(est, task, xs, ys)
    closed = sum(c.lr * gt @ gi.T for c, gt, gi in zip(task.checkpoints, _checkpoint_grads(task, xs, ys),
                                                        _checkpoint_grads(task, task.x_train, task.y_train),
                                                        strict=True))
    np.testing.assert_allclose(s, closed.numpy(), rtol=2e-6, atol=1e-6)
    self_inf = compute_self_influence(est, task, 5)
    gi = _checkpoint_grads(task, task.x_train, task.y_train)
    np.testing.assert_allclose(self_inf, sum(c.lr * (g * g).sum(1) for c, g in zip(task.checkpoints, gi, strict=True)),
                               rtol=1e-8)


def test_z0inf_with_few_directions_is_the_projected_gradient_closed_form():
    task, xs, ys = _quadratic_task()
    est = get_estimator("z0inf", {"directions": 3, "step": 0.3}).fit(task)
    s = compute_scores(est, task, xs, ys)
    p = task.space.size
    closed = 0
    for c, q, gt, gi in zip(task.checkpoints, est.bases_, _checkpoint_grads(task, xs, ys),
                            _checkpoint_grads(task, task.x_train, task.y_train), strict=True):
        assert torch.allclose(q @ q.T, torch.eye(len(q), dtype=q.dtype), atol=1e-12)  # orthonormal
        closed = closed + c.lr * p / len(q) * (gt @ q.T) @ (gi @ q.T).T
    np.testing.assert_allclose(s, closed.numpy(), rtol=2e-6, atol=1e-6)
    # the first direction of a later checkpoint is the displacement training made since the previous one
    flat = [task.space.flatten(task.checkpoint_params(c)) for c in task.checkpoints]
    move = (flat[1] - flat[0]) / (flat[1] - flat[0]).norm()
    assert abs(float(est.bases_[1][0] @ move)) == pytest.approx(1.0, abs=1e-12)
    assert [len(q) for q in est.bases_] == [3, 4, 4]


# ---------------------------------------------------------------------------- Forward-INF
@pytest.fixture(scope="module")
def logreg():
    x, y = blobs(75, seed=0)
    model = build_model(ModelConfig(arch="logreg", hidden=[], dtype="float64"), (8,), 3)
    cfg = TrainConfig(optimizer="lbfgs", lr=1.0, epochs=20, batch_size=20, weight_decay=1e-2, seed=0, checkpoints=1)
    train_model(model, x[:60], y[:60], cfg)
    model.eval()
    task = InfluenceTask(model=model, space=ParamSpace(model, select_parameters(model)), x_train=x[:60],
                         y_train=y[:60], weight_decay=1e-2, damping=0.0)
    return task, x[60:], y[60:], compute_scores(get_estimator("exact"), task, x[60:], y[60:])


def test_forward_inf_ranks_like_exact_on_logistic_regression(logreg):
    task, xs, ys, exact = logreg
    s = compute_scores(get_estimator("forward_inf"), task, xs, ys)
    assert mean_spearman(s, exact) >= 0.9
    assert (np.sign(s) == np.sign(exact))[np.abs(exact) > 0.1 * np.abs(exact).max()].mean() >= 0.95
    top = np.argsort(-s, axis=1)[:, :5]
    assert (task.y_train.numpy()[top] == ys.numpy()[:, None]).mean() >= 0.6  # proponents share the label (chance: 1/3)


def test_forward_inf_without_anchor_is_a_scaled_gradient_dot_product(logreg):
    task, xs, ys, _ = logreg
    s = compute_scores(get_estimator("forward_inf", {"anchor": 0.0, "steps": 1, "lr": 0.5}), task, xs, ys)
    dot = compute_scores(get_estimator("graddot"), task, xs, ys)
    np.testing.assert_allclose(s, 0.5 * dot, rtol=1e-4, atol=1e-8 * np.abs(dot).max())  # O(eps^2) terms


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_forward_inf_spectral_solve_is_the_fine_tune_in_the_linear_limit(arch):
    """The closed form (eigendecomposition of H_B) against the fine-tune it replaces, at a test weight small
    enough that the fine-tune is linear; at the default 1e-3 they differ by the fine-tune's nonlinearity."""
    task, xs, ys = tiny_task(arch)
    runs = {}
    for solver in ("finetune", "spectral"):
        est = get_estimator("forward_inf", {"solver": solver, "test_weight": 1e-6})
        runs[solver] = (compute_scores(est, task, xs, ys), compute_self_influence(est, task, 32), est.fit_info())
    (s_ft, self_ft, info_ft), (s_sp, self_sp, info_sp) = runs["finetune"], runs["spectral"]
    assert info_sp["solver"] == "spectral" and info_ft["solver"] == "finetune"
    assert info_sp["lr"] == pytest.approx(info_ft["lr"], rel=1e-9)  # the same step size rule
    np.testing.assert_allclose(s_sp, s_ft, atol=2e-3 * np.abs(s_ft).max())
    np.testing.assert_allclose(self_sp, self_ft, atol=2e-3 * np.abs(self_ft).max())
    assert mean_spearman(s_sp, s_ft) >= 0.999


def test_forward_inf_auto_solver_and_its_validation():
    task, xs, ys = tiny_task("mlp")
    assert get_estimator("forward_inf").fit(task).fit_info()["solver"] == "spectral"  # p = 75: H_B is cheap
    assert get_estimator("forward_inf", {"anchor": 0.0}).fit(task).fit_info()["solver"] == "finetune"
    with pytest.raises(ConfigError, match="forward_inf.solver"):
        get_estimator("forward_inf", {"solver": "eigh"})


# ---------------------------------------------------------------------------- data value embedding
def _recorded(optimizer: str, lr: float):
    x, y = blobs(30, seed=1)
    model = build_model(ModelConfig(arch="mlp", hidden=[5], dtype="float64"), (8,), 3)
    cfg = TrainConfig(optimizer=optimizer, lr=lr, epochs=2, batch_size=8, weight_decay=1e-2, seed=3, checkpoints=1)
    result = train_model(model, x[:24], y[:24], cfg, record_trajectory=True)
    model.eval()
    task = InfluenceTask(model=model, space=ParamSpace(model, select_parameters(model)), x_train=x[:24],
                         y_train=y[:24], weight_decay=1e-2, damping=0.0, trajectory=result.trajectory)
    return task, x[24:], y[24:], cfg


def _rerun(task: InfluenceTask, cfg: TrainConfig, sample: int, weight: float) -> nn.Module:
    """The recorded steps again with PyTorch's optimizer, sample ``sample`` weighted ``weight``."""
    tr = task.trajectory
    model = build_model(ModelConfig(arch="mlp", hidden=[5], dtype="float64"), (8,), 3)
    model.load_state_dict(tr.initial_state)
    if tr.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=tr.momentum)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1.0, betas=tr.betas, eps=tr.eps)
    for idx, lr in zip(tr.batches, tr.lrs, strict=True):
        opt.param_groups[0]["lr"] = lr
        w = torch.ones(len(idx), dtype=torch.float64)
        w[idx == sample] = weight
        opt.zero_grad()
        per = nn.functional.cross_entropy(model(task.x_train[idx]), task.y_train[idx], reduction="none")
        ((w * per).sum() / len(idx) + l2_penalty(model, cfg.weight_decay)).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 0.02)])
def test_data_value_embedding_is_the_derivative_of_an_explicit_rerun(optimizer, lr):
    task, _, _, cfg = _recorded(optimizer, lr)
    emb = compute_train_factors(get_estimator("data_value_embedding").fit(task), task, 7)
    h = 1e-5
    for i in (0, 9, 23):
        up, down = (task.space.flatten(task.space.params(_rerun(task, cfg, i, 1 + s * h))) for s in (1, -1))
        numeric = -(up - down) / (2 * h)  # d theta_T / d(-w_i)
        np.testing.assert_allclose(emb[i].numpy(), numeric.numpy(), rtol=1e-6, atol=1e-6 * float(numeric.abs().max()))


def test_data_value_embedding_predicts_removing_the_sample_from_the_recorded_run():
    """The derivative test above is the exact property (1e-6); this is what it is for: the actual
    leave-one-out of the recorded SGD run, to first order."""
    task, xs, ys, cfg = _recorded("sgd", 0.05)
    est = get_estimator("data_value_embedding").fit(task)
    s = compute_scores(est, task, xs, ys)
    base = nn.functional.cross_entropy(task.model(xs), ys, reduction="none").detach()
    for i in (2, 11, 20):
        gone = _rerun(task, cfg, i, 0.0)
        actual = (nn.functional.cross_entropy(gone(xs), ys, reduction="none").detach() - base).numpy()
        # removing 1 of 8 batch members is not infinitesimal: first order, up to a few % of the effect
        assert np.abs(s[:, i] - actual).max() <= 0.1 * np.abs(actual).max()
        assert np.corrcoef(s[:, i], actual)[0, 1] > 0.98 and np.abs(actual).max() > 1e-3


def test_data_value_embedding_needs_a_recorded_trajectory():
    task, xs, ys = tiny_task("mlp")
    with pytest.raises(MethodError, match="trajectory") as err:
        compute_scores(get_estimator("data_value_embedding"), dataclasses.replace(task, trajectory=None), xs, ys)
    assert "\n" not in str(err.value) and "precompute" in str(err.value)
    moved = {n: p.detach() + 0.1 for n, p in task.model.named_parameters()}
    other = build_model(ModelConfig(arch="mlp", hidden=[6], dtype="float64"), (8,), 3)
    other.load_state_dict(moved)
    wrong = dataclasses.replace(task, model=other.eval(), space=ParamSpace(other, select_parameters(other)))
    with pytest.raises(MethodError, match="does not reproduce"):
        get_estimator("data_value_embedding").fit(wrong)


def test_recording_the_trajectory_does_not_change_training():
    x, y = blobs(30)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, epochs=3, batch_size=8, weight_decay=1e-2, seed=0, checkpoints=1)
    states = []
    for record in (False, True):
        model = build_model(ModelConfig(arch="mlp", hidden=[4], dtype="float64"), (8,), 3)
        result = train_model(model, x, y, cfg, record_trajectory=record)
        states.append(model.state_dict())
        assert (result.trajectory is None) != record
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert result.trajectory.steps == 3 * 4 and sorted(torch.cat(result.trajectory.batches[:4]).tolist()) == list(range(30))
    lbfgs = train_model(build_model(ModelConfig(arch="logreg", hidden=[], dtype="float64"), (8,), 3), x, y,
                        dataclasses.replace(cfg, optimizer="lbfgs"), record_trajectory=True)
    assert lbfgs.trajectory is None  # full batch: no minibatch trajectory to replay


# ---------------------------------------------------------------------------- datamodels
def test_datamodels_recover_a_planted_linear_datamodel():
    rng = np.random.default_rng(0)
    n, m, s = 30, 6, 400
    w_true = rng.normal(size=(m, n))
    masks = rng.random((s, n)) < 0.5
    out = masks @ w_true.T + rng.normal(size=m) + 0.05 * rng.normal(size=(s, m))
    w, _ = fit_datamodels(masks, out, alpha=1.0)
    np.testing.assert_allclose(w, w_true, atol=0.05)
    fit = heldout_fit(masks, out, 1.0, 0.0, folds=5)
    assert fit["heldout_r2"] > 0.99 and fit["heldout_lds"] > 0.95
    noise = heldout_fit(masks, rng.normal(size=(s, m)), 1.0, 0.0, folds=5)
    assert abs(noise["heldout_lds"]) < 0.15  # nothing to find: the held-out fit says so


def test_sparse_datamodels_find_the_planted_support_with_fewer_subsets_than_samples():
    rng = np.random.default_rng(1)
    n, m, s = 100, 4, 80
    w_true = np.zeros((m, n))
    support = [rng.choice(n, 4, replace=False) for _ in range(m)]
    for t, sup in enumerate(support):
        w_true[t, sup] = rng.choice([-1.0, 1.0], 4) * rng.uniform(1, 2, 4)
    masks = rng.random((s, n)) < 0.5
    out = masks @ w_true.T + 0.01 * rng.normal(size=(s, m))
    w, _ = fit_datamodels(masks, out, alpha=1e-3, l1=0.01)
    for t, sup in enumerate(support):
        assert set(np.argsort(-np.abs(w[t]))[:4]) == set(sup)
        assert (np.sign(w[t, sup]) == np.sign(w_true[t, sup])).all()  # sign: positive weight = proponent


def test_datamodels_on_a_real_evaluate_cache(logreg_run, tmp_path):
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
    from precompute.evaluation.lds import lds

    run = copy_run(logreg_run, tmp_path)
    ctx = RunContext.load(run)
    with pytest.raises(MethodError, match="evaluate"):
        ctx.compute_scores("datamodels", {"run": str(run)}, test_index=np.arange(3))
    evaluate_run(run, EvalSettings(methods=["exact"], workers=1, lds=LDSSettings(subsets=40, bootstrap=0),
                                   loo=LOOSettings(enabled=False), brittleness=BrittlenessSettings(enabled=False),
                                   damping=DampingSettings(enabled=False), agreement=AgreementSettings(enabled=False)),
                 **QUIET)
    s = ctx.compute_scores("datamodels", {"run": str(run), "alpha": 1.0}, test_index=np.arange(20))
    assert s.shape == (20, ctx.n_train) and np.isfinite(s).all()
    gt = json.loads((run / "evaluation" / "results.json").read_text())["lds"]["key"]
    masks = np.load(run / "evaluation" / "groundtruth" / f"lds-{gt}" / "masks.npy")
    target = -np.load(run / "evaluation" / "groundtruth" / f"lds-{gt}" / "test_loss.npy").mean(1)[:, :20]
    in_sample = lds(s, masks, target, n_boot=0)["lds"]
    assert in_sample > 0.9  # it reproduces the subsets it was fitted to ...
    model = ctx.model()
    task = InfluenceTask(model=model, space=ParamSpace(model, select_parameters(model)), x_train=ctx.x_train,
                         y_train=ctx.y_train, weight_decay=1e-3, damping=0.0)
    est = get_estimator("datamodels", {"run": str(run), "alpha": 1.0}).fit(task)
    info = est.fit_info()
    assert info["subsets"] == 40 and info["alpha"] == 1.0
    assert info["heldout_lds"] < in_sample - 0.5  # ... and the held-out fit says how little 40 of 1,437 tell
    with pytest.raises(MethodError, match="not one of its samples"):
        est.query_factors(ctx.x_train[:2] + 1.0, ctx.y_train[:2])
