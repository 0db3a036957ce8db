"""Peer workers of ``bench/bench_peers.py`` for the curvature methods: Arnoldi (captum, dattri), DataInf
(dattri), EK-FAC and K-FAC (kronfluence).

Each worker runs in the peers' venv in a fresh process, loads the setup file of ``bench_peers.py``, and
times the peer's own fit + the full ``[360 x 1,437]`` score matrix; it returns ``seconds``,
``rss_start_mb`` and ``checksum`` (``sum |scores|``, on our scale: see each worker). Settings are kept
equal to ours (:data:`OURS_OPTIONS_CURVATURE`): the Hessian / Fisher is that of the mean per-sample loss
and the peer's damping is ``weight_decay + lambda`` (ours: H includes the weight decay, then + lambda).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

#: our settings for these methods, chosen to do the peers' work: Arnoldi without the residual term
#: (captum and dattri drop the directions outside the kept eigenvectors, as the paper), K-FAC/EK-FAC
#: with the sampled-label Fisher (kronfluence's default, ``use_empirical_fisher=False``)
OURS_OPTIONS_CURVATURE = {"arnoldi": {"n_iter": 200, "rank": 100, "residual": "drop"},
                          "kfac": {"fisher": "sampled"}, "ekfac": {"fisher": "sampled"}}
PEERS_CURVATURE = {"arnoldi": ["captum", "dattri"], "datainf": ["dattri"], "ekfac": ["kronfluence"],
                   "kfac": ["kronfluence"]}
TRAIN_CHUNK = 512


def worker_captum_arnoldi(setup, model, peak_rss_mb) -> dict:
    """captum's ``ArnoldiInfluenceFunction``: its HVP is of the *summed* loss over ``hessian_dataset``
    (n x ours), so ``hessian_reg = n (wd + lambda)`` gives eigenvalues n (mu_k + wd + lambda) and scores
    = ours / n: the checksum is multiplied by n. ``arnoldi_dim = n_iter + 1``: captum drops the last
    Krylov vector, so this is the same 200-dim basis (one more HVP than ours); ``arnoldi_tol = 1e-10``
    (its default 0.1 is an absolute norm) so it does not stop early."""
    import torch
    from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction
    from torch.utils.data import DataLoader, TensorDataset

    opts = OURS_OPTIONS_CURVATURE["arnoldi"]
    n = len(setup["y"])
    path = Path(tempfile.mkdtemp(prefix="captum-arnoldi-")) / "final.pt"
    torch.save(setup["state"], path)
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    train = TensorDataset(setup["x"], setup["y"])
    hess = DataLoader(train, batch_size=n, shuffle=False)
    arn = ArnoldiInfluenceFunction(model, train, str(path), loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"),
                                   batch_size=TRAIN_CHUNK, hessian_dataset=hess, sample_wise_grads_per_batch=True,
                                   projection_dim=opts["rank"], arnoldi_dim=opts["n_iter"] + 1, arnoldi_tol=1e-10,
                                   hessian_reg=n * (setup["weight_decay"] + setup["damping"]))
    scores = arn.influence((setup["xt"], setup["yt"]))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_start_mb": rss0, "checksum": float(scores.double().abs().sum()) * n}


def worker_dattri_curvature(method: str, setup, model, task, peak_rss_mb) -> dict:
    """dattri's ``IFAttributorArnoldi`` (mean-loss HVP + ``regularization``, ``proj_dim`` = rank,
    ``max_iter`` = n_iter) or ``IFAttributorDataInf`` (one ``regularization`` for every layer, the same
    Sherman-Morrison average as ours). ``task``: the unregularized per-sample-loss AttributionTask."""
    from dattri.algorithm.influence_function import IFAttributorArnoldi, IFAttributorDataInf
    from torch.utils.data import DataLoader, TensorDataset

    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    data = TensorDataset(setup["x"], setup["y"])
    train = DataLoader(data, batch_size=TRAIN_CHUNK, shuffle=False)
    test = DataLoader(TensorDataset(setup["xt"], setup["yt"]), batch_size=len(setup["yt"]), shuffle=False)
    mu = setup["weight_decay"] + setup["damping"]
    if method == "arnoldi":
        opts = OURS_OPTIONS_CURVATURE["arnoldi"]
        att = IFAttributorArnoldi(task, proj_dim=opts["rank"], max_iter=opts["n_iter"], regularization=mu)
        att.cache(DataLoader(data, batch_size=len(data), shuffle=False))
    else:  # DataInf caches per-sample training gradients; its loader yields one sample at a time
        att = IFAttributorDataInf(task, regularization=mu)
        att.cache(DataLoader(data, batch_size=1, shuffle=False))
    scores = att.attribute(train, test)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_start_mb": rss0, "checksum": float(scores.double().abs().sum())}


def worker_kronfluence(method: str, setup, model, peak_rss_mb) -> dict:
    """kronfluence's ``Analyzer`` on CPU: ``fit_all_factors`` (``strategy`` = ``method``, sampled-label
    Fisher over all 1,437 rows, mean-normalized) then ``compute_pairwise_scores`` with
    ``damping_factor = wd + lambda``; it writes factors and scores to a temporary ``output_dir`` (its
    own pipeline, inside the timed region)."""
    import torch
    import torch.nn.functional as F
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from torch.utils.data import TensorDataset

    class ClassificationTask(Task):
        def compute_train_loss(self, batch, model, sample: bool = False) -> torch.Tensor:
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(F.softmax(logits.detach(), dim=-1), num_samples=1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

    out_dir = tempfile.mkdtemp(prefix="kronfluence-")
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    task = ClassificationTask()
    model = prepare_model(model, task)
    analyzer = Analyzer("bench", model, task, cpu=True, disable_tqdm=True, output_dir=out_dir)
    train = TensorDataset(setup["x"], setup["y"])
    test = TensorDataset(setup["xt"], setup["yt"])
    analyzer.fit_all_factors("f", train, per_device_batch_size=TRAIN_CHUNK,
                             factor_args=FactorArguments(strategy=method), overwrite_output_dir=True)
    analyzer.compute_pairwise_scores("s", "f", test, train, per_device_query_batch_size=len(test),
                                     per_device_train_batch_size=TRAIN_CHUNK, overwrite_output_dir=True,
                                     score_args=ScoreArguments(damping_factor=setup["weight_decay"]
                                                               + setup["damping"]))
    scores = analyzer.load_pairwise_scores("s")["all_modules"]
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_start_mb": rss0, "checksum": float(scores.double().abs().sum())}
