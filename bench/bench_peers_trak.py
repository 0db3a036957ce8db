"""Peer worker of ``bench/bench_peers.py`` for TRAK: dattri's ``TRAKAttributor``.

Same work on both sides (:data:`OURS_OPTIONS_TRAK`): the 5 saved checkpoints ensembled, a k = 512 dense
Gaussian projection N(0, 1/k) of the p = 4,810-dim per-sample gradients of the margin
``f = log p_y - log(1 - p_y)`` (train and test rows), one ``[k, k]`` kernel per checkpoint, Q = 1 - p_y.
What differs (by construction of the two methods, not of the bench):

* the random projections: ours ``torch.randn(p, k)`` seeded ``seed + m``; dattri's CPU projector draws
  N(0, 1) blocks of 100 columns seeded per block and checkpoint, then divides by sqrt(k); same
  distribution, other draws, so ``sum |scores|`` agrees only statistically;
* the kernel: ours ``(Phi^T Phi / n + lambda I)^-1``, dattri's ``(Phi^T Phi / p + reg I)^-1`` on gradients
  divided by sqrt(p): with ``reg = n lambda / p`` the two are the same matrix and dattri's scores are ours
  / n (its checksum below is multiplied by n);
* the ensemble: ours averages ``phi_t K_m^-1 phi_i Q_i`` over checkpoints (Q of each checkpoint), dattri
  averages ``phi_t K_m^-1 phi_i`` and multiplies by the checkpoint-averaged Q (the TRAK paper's form).
  The work is the same: M x (n + m) projected margin gradients, M kernels and solves.
"""

from __future__ import annotations

import time

#: our TRAK settings (its defaults, spelled out): dattri gets the same projection dimension and checkpoints
OURS_OPTIONS_TRAK = {"trak": {"proj_dim": 512, "checkpoints": "all", "seed": 0}}
PEERS_TRAK = {"trak": ["dattri"]}
TRAIN_CHUNK = 512


def _margin(logits, y):
    """``z_y - logsumexp_{c != y} z_c`` summed over the rows (``log p_y - log(1 - p_y)``, stable)."""
    import torch

    mask = torch.arange(logits.shape[-1], device=logits.device) == y.long()[..., None]
    z_y = (logits * mask).sum(-1)
    others = torch.where(mask, torch.full_like(logits, float("-inf")), logits)
    return (z_y - torch.logsumexp(others, dim=-1)).sum()


def worker_dattri_trak(setup, model, peak_rss_mb) -> dict:
    """dattri's ``TRAKAttributor`` over the checkpoints with ``regularization = n lambda / p``; the train
    rows in 512-row batches, the 360 test rows in one."""
    import torch
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    opts = OURS_OPTIONS_TRAK["trak"]
    n, p = len(setup["y"]), sum(t.numel() for t in model.parameters())
    states = [c["state"] for c in setup["checkpoints"]]

    def margin_func(params, data):  # per sample (dattri vmaps it): the TRAK model output f
        x, y = data
        return _margin(torch.func.functional_call(model, params, x.unsqueeze(0)), y.reshape(1))

    def correct_probability(params, data):  # p_y, for Q = 1 - p_y
        x, y = data
        logits = torch.func.functional_call(model, params, x.unsqueeze(0))
        return (torch.softmax(logits[0], dim=-1) * (torch.arange(logits.shape[-1]) == y.long())).sum()

    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    task = AttributionTask(loss_func=margin_func, model=model, checkpoints=states)
    att = TRAKAttributor(task, correct_probability_func=correct_probability, device="cpu",
                         projector_kwargs={"proj_dim": opts["proj_dim"], "proj_seed": opts["seed"], "device": "cpu"},
                         regularization=n * setup["damping"] / p)
    train = DataLoader(TensorDataset(setup["x"], setup["y"]), batch_size=TRAIN_CHUNK, shuffle=False)
    test = DataLoader(TensorDataset(setup["xt"], setup["yt"]), batch_size=len(setup["yt"]), shuffle=False)
    scores = att.attribute(test_dataloader=test, train_dataloader=train)  # [n_train, n_test]
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_start_mb": rss0, "checksum": float(scores.detach().double().abs().sum()) * n}
