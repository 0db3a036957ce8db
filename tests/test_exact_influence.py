"""Exact influence against closed forms and against real leave-one-out retraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from precompute.config import ModelConfig, TrainConfig
from precompute.data.digits import load_digits_split
from precompute.errors import MethodError
from precompute.influence import InfluenceTask, get_estimator
from precompute.influence.runner import compute_scores, compute_self_influence
from precompute.models import build_model
from precompute.params import ParamSpace, select_parameters
from precompute.training import train_model


def _logreg_task(n_train: int | None, weight_decay: float, damping: float = 0.0):
    ds = load_digits_split(0.2, 0)
    n = n_train or ds.n_train
    x = torch.tensor(ds.x_train[:n], dtype=torch.float64)
    y = torch.tensor(ds.y_train[:n])
    xt = torch.tensor(ds.x_test[:40], dtype=torch.float64)
    yt = torch.tensor(ds.y_test[:40])
    model = build_model(ModelConfig(arch="logreg", dtype="float64"), (1, 8, 8), 10)
    train_model(model, x, y, TrainConfig(optimizer="lbfgs", lr=1.0, epochs=30, weight_decay=weight_decay,
                                         checkpoints=1))
    space = ParamSpace(model, select_parameters(model, "all"))
    task = InfluenceTask(model=model, space=space, x_train=x, y_train=y, weight_decay=weight_decay,
                         damping=damping)
    return task, xt, yt


def _numpy_logreg_influence(W, b, X, Y, Xt, Yt, wd, lam):
    """Independent closed form: -I_up,loss = g_t^T (H + lambda I)^-1 g_i for softmax regression.

    Parameters flattened as [W (C x D, row-major), b (C)], H = mean per-sample Hessian + wd I.
    """
    def probs(Xf):
        z = Xf @ W.T + b
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def grads(Xf, Yv):
        P = probs(Xf)
        R = P - np.eye(W.shape[0])[Yv]  # [n, C]
        return np.concatenate([(R[:, :, None] * Xf[:, None, :]).reshape(len(Xf), -1), R], axis=1)

    Xf, Xtf = X.reshape(len(X), -1), Xt.reshape(len(Xt), -1)
    C, D = W.shape
    P = probs(Xf)
    H = np.zeros((C * D + C, C * D + C))
    for x, p in zip(Xf, P, strict=True):
        A = np.diag(p) - np.outer(p, p)
        H[:C * D, :C * D] += np.kron(A, np.outer(x, x))
        H[:C * D, C * D:] += np.kron(A, x[:, None])
        H[C * D:, :C * D] += np.kron(A, x[None, :])
        H[C * D:, C * D:] += A
    H = H / len(Xf) + (wd + lam) * np.eye(C * D + C)
    return grads(Xtf, Yt) @ np.linalg.solve(H, grads(Xf, Y).T)  # [n_test, n_train]


def test_exact_equals_closed_form_logistic_regression() -> None:
    wd, lam = 1e-2, 1e-3
    task, xt, yt = _logreg_task(n_train=150, weight_decay=wd, damping=lam)
    est = get_estimator("exact")
    ours = compute_scores(est, task, xt, yt)
    lin = task.model[1]
    ref = _numpy_logreg_influence(lin.weight.detach().numpy(), lin.bias.detach().numpy(),
                                  task.x_train.numpy(), task.y_train.numpy(), xt.numpy(), yt.numpy(), wd, lam)
    # the cache stores float32; compare relative to the score scale
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()
    # self-influence is g_i^T (H + lambda I)^-1 g_i: the diagonal of the train x train matrix
    ref_tt = _numpy_logreg_influence(lin.weight.detach().numpy(), lin.bias.detach().numpy(),
                                     task.x_train.numpy(), task.y_train.numpy(), task.x_train.numpy(),
                                     task.y_train.numpy(), wd, lam)
    assert np.allclose(compute_self_influence(est, task, 64), np.diag(ref_tt), rtol=1e-8)


def _retrain_without(task: InfluenceTask, remove: int, theta0: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Retrain to convergence on all but one sample (mean over n-1), warm-started at the full optimum."""
    model = task.model
    keep = torch.ones(task.n_train, dtype=torch.bool)
    keep[remove] = False
    x, y = task.x_train[keep], task.y_train[keep]
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(theta0[n])
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=500, history_size=50, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + 0.5 * task.weight_decay * sum(
            (p * p).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model


def test_exact_predicts_leave_one_out_retraining() -> None:
    """Removing i changes the test loss by ~ +score(t, i) / n; checked on 30 real retrainings."""
    task, xt, yt = _logreg_task(n_train=None, weight_decay=1e-3)
    est = get_estimator("exact")
    scores = compute_scores(est, task, xt, yt).astype(np.float64)
    theta0 = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    with torch.no_grad():
        base_losses = torch.nn.functional.cross_entropy(task.model(xt), yt, reduction="none").numpy()
    t = int(np.argmax(base_losses))  # the worst-predicted test point has the largest effects
    order = np.argsort(scores[t])
    removed = np.concatenate([order[-15:], order[:15]])  # 15 strongest proponents, 15 strongest opponents
    predicted, actual = [], []
    for i in removed:
        model = _retrain_without(task, int(i), theta0)
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(model(xt[t:t + 1]), yt[t:t + 1]).item()
        actual.append(loss - base_losses[t])
        predicted.append(scores[t, i] / task.n_train)
    with torch.no_grad():
        for n, p in task.model.named_parameters():
            p.copy_(theta0[n])
    r = pearsonr(predicted, actual).statistic
    print(f"LOO Pearson r = {r:.4f}")
    assert r >= 0.9, f"Pearson(predicted, actual LOO change) = {r:.3f}"
    # sign convention: removing a proponent raises the test loss
    assert np.mean(np.array(actual)[:15] > 0) >= 0.9


def test_exact_refuses_too_many_parameters() -> None:
    task, _, _ = _logreg_task(n_train=50, weight_decay=1e-3)
    with pytest.raises(MethodError, match=r"650 influence parameters.*max_params=100.*last_layer"):
        get_estimator("exact", {"max_params": 100}).fit(task)


def test_exact_refuses_indefinite_hessian() -> None:
    task, _, _ = _logreg_task(n_train=50, weight_decay=0.0)
    task.weight_decay = -1.0  # makes H + lambda I indefinite on purpose
    with pytest.raises(MethodError, match="not positive definite.*raise influence.damping"):
        get_estimator("exact").fit(task)


def test_gradient_similarity_and_tracin_relations() -> None:
    task, xt, yt = _logreg_task(n_train=80, weight_decay=1e-3)
    g_tr = task.gradients(task.x_train, task.y_train)
    g_te = task.gradients(xt, yt)
    dot = compute_scores(get_estimator("graddot"), task, xt, yt)
    assert np.allclose(dot, (g_te @ g_tr.T).numpy(), rtol=1e-5, atol=1e-7)
    cos = compute_scores(get_estimator("gradcos"), task, xt, yt)
    assert np.abs(cos).max() <= 1 + 1e-6
    assert np.allclose(compute_self_influence(get_estimator("gradcos").fit(task), task, 32), 1.0)
    # TracIn with a single checkpoint at the final weights is lr * grad-dot
    from precompute.training import Checkpoint
    task.checkpoints = [Checkpoint(epoch=1, lr=0.5, state_dict=task.model.state_dict())]
    tr = compute_scores(get_estimator("tracin"), task, xt, yt)
    assert np.allclose(tr, 0.5 * dot, rtol=1e-5, atol=1e-7)
