"""Our influence methods against the fastest installed peer on the same model and data.

Usage::

    python3 -m venv /work/peers-venv                       # once, outside the repository
    /work/peers-venv/bin/pip install torch==2.13.0 dattri captum psutil
    /work/peers-venv/bin/pip install --no-deps kronfluence  # (its torchvision requirement is unused)
    .venv/bin/python bench/bench_peers.py [--peer-python /work/peers-venv/bin/python] [--repeats 3]
                                          [--threads 2] [--methods exact,cg,lissa,tracin,graddot,gradcos,
                                                   arnoldi,datainf,ekfac,kfac,trak]

Model and data: a 4,810-parameter ReLU MLP (64 -> 64 -> 10) trained on the digits split with the
``digits`` sample recipe (Adam, 60 epochs, weight decay 1e-3, 5 checkpoints), float32; every method
computes the full ``[360 x 1,437]`` score matrix (no self-influence). Each measurement is a fresh
process (ours in the project venv, each peer in ``--peer-python``; the Arnoldi, DataInf and
K-FAC/EK-FAC peer workers are in ``bench_peers_curvature.py``, TRAK's in ``bench_peers_trak.py``)
pinned to ``--threads`` threads; runs are interleaved (ours, peer, ours, peer, ...) ``--repeats`` times.
Wall time is the method's own work (fit + scores, after imports, ``torch._dynamo`` included on both sides,
and loading the shared setup file); peak RSS is the worker's own
high-water mark (``VmHWM`` in ``/proc/self/status``, imports included, so torch's ~220 MB is in both),
and "method MB" its rise during the timed region (peak minus the high-water mark at its start). Not
``ru_maxrss`` from ``wait4``: a child's ``ru_maxrss`` keeps the RSS it had before ``exec``, i.e. this
driver's (~450 MB after training), which hid the peers' real peak. The ratio is the median
over the interleaved pairs of ours / peer (< 1: we are faster). Ours is the store's path without the
disk: query factors once, train factors in 512-row chunks scored as they come (never ``[n_train, d]``).
A peer that is not installed prints "not installed"; a worker that fails (e.g. over the 8 GB
address-space cap, ``BENCH_PEERS_MAX_GB``) prints its error. Timings on a shared CPU are noisy.
``BENCH_PEERS_OURS_PATH=vmap`` makes our per-sample gradients take the ``torch.func`` path (an A/B of
the hook path in :mod:`precompute.hooked_gradients`); ``BENCH_PEERS_OURS_HVP=forward`` makes every HVP
forward-over-reverse (an A/B of the reverse-mode path for few vectors in :mod:`precompute.hessian`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_peers_curvature import (
    OURS_OPTIONS_CURVATURE,
    PEERS_CURVATURE,
    worker_captum_arnoldi,
    worker_dattri_curvature,
    worker_kronfluence,
)
from bench_peers_trak import OURS_OPTIONS_TRAK, PEERS_TRAK, worker_dattri_trak

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEER_PYTHON = "/work/peers-venv/bin/python"
#: method -> peers that implement the same quantity (the fastest installed one is reported)
PEERS = {"graddot": ["dattri"], "tracin": ["captum", "dattri"], "exact": ["dattri"], "cg": ["dattri"],
         "lissa": ["dattri"], "gradcos": ["dattri"], **PEERS_CURVATURE,
         **PEERS_TRAK}
#: our settings where the defaults differ from what the peer is given (kept equal on both sides)
OURS_OPTIONS = {"cg": {"tol": 1e-6, "max_iter": 100}, "lissa": {"depth": 100, "batch_size": 256},
                **OURS_OPTIONS_CURVATURE, **OURS_OPTIONS_TRAK}
TRAIN_CHUNK = 512
#: dattri's test batch where all 360 rows at once do not fit (its CG failed at 8, 14 and 18 GB caps with
#: one batch of 360; its LiSSA's RSS grows ~0.18 GB per step with 360 rows, ~20 MB with 40: it failed the
#: 8 GB cap at depth 100); the same solve per test vector, in batches (dattri's LiSSA draws its own
#: mini-batches per vector anyway; 20, 40 and 90 rows took the same time at depth 40)
DATTRI_TEST_BATCH = {"cg": 40, "lissa": 40}
#: address-space cap per worker process (GB; env BENCH_PEERS_MAX_GB): dattri's CG passed 12 GB RSS here
MAX_GB = 8.0


def make_model():
    """The benchmark's ReLU MLP: 64 -> 64 -> 10 (4,810 parameters); torch only, both venvs."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def peak_rss_mb() -> float:
    """This process's peak RSS so far, MB: ``VmHWM`` (reset by ``exec``), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- setup (project venv)

def prepare(path: Path) -> None:
    """Train the model once and save data, final weights and checkpoints to ``path`` (torch.save)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from precompute.config import load_config
    from precompute.data import load_dataset
    from precompute.training import train_model
    from sample_data import sample_config_path

    cfg = load_config(sample_config_path("digits"))
    ds = load_dataset(cfg.data)
    x, y = torch.as_tensor(ds.x_train, dtype=torch.float32), torch.as_tensor(ds.y_train)
    xt, yt = torch.as_tensor(ds.x_test, dtype=torch.float32), torch.as_tensor(ds.y_test)
    model = make_model()
    result = train_model(model, x, y, cfg.train)
    model.eval()
    torch.save({"x": x, "y": y, "xt": xt, "yt": yt, "state": model.state_dict(),
                "checkpoints": [{"lr": c.lr, "state": c.state_dict} for c in result.checkpoints],
                "weight_decay": cfg.train.weight_decay, "damping": float(cfg.influence.damping)}, path)


# ---------------------------------------------------------------- workers

def _load(path: str):
    import torch

    setup = torch.load(path, weights_only=False)
    model = make_model()
    model.load_state_dict(setup["state"])
    model.eval()
    return setup, model


def worker_ours(method: str, setup_path: str) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from precompute.influence import InfluenceTask, get_estimator, registered
    from precompute.params import ParamSpace, select_parameters
    from precompute.training import Checkpoint

    if os.environ.get("BENCH_PEERS_OURS_PATH") == "vmap":  # A/B: per-sample gradients by torch.func only
        import precompute.gradients

        precompute.gradients.hook_plan = lambda model, space: None
    if os.environ.get("BENCH_PEERS_OURS_HVP") == "forward":  # A/B: every HVP forward-over-reverse
        import precompute.hessian

        precompute.hessian.REVERSE_HVP_MAX_VECTORS = 0
    registered()  # imports every estimator module (the peers' imports are outside their timed regions too)
    import torch._dynamo  # noqa: F401  torch.func's first grad/vjp imports it lazily (2.5 s here); dattri's
    # and captum's imports load it before their timed regions, so it is outside ours too
    setup, model = _load(setup_path)
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    ckpts = [Checkpoint(epoch=i + 1, lr=c["lr"], state_dict=c["state"]) for i, c in enumerate(setup["checkpoints"])]
    space = ParamSpace(model, select_parameters(model, "all"))
    task = InfluenceTask(model, space, setup["x"], setup["y"], setup["weight_decay"], setup["damping"],
                         checkpoints=ckpts, batch_size=512)
    est = get_estimator(method, OURS_OPTIONS.get(method)).fit(task)
    q = est.query_factors(setup["xt"], setup["yt"]).detach()
    out = torch.empty(len(q), task.n_train, dtype=torch.float32)
    for s in range(0, task.n_train, TRAIN_CHUNK):
        t = est.train_factors(task.x_train[s:s + TRAIN_CHUNK], task.y_train[s:s + TRAIN_CHUNK]).detach()
        out[:, s:s + TRAIN_CHUNK] = est.scores(q, t.to(q.dtype)).float()
        del t
    seconds = time.perf_counter() - t0
    extra = {"scale": float(est.scale_)} if method == "lissa" else {}
    return {"seconds": seconds, "rss_start_mb": rss0, "checksum": float(out.double().abs().sum()), **extra}


def _dattri_task(setup, model, checkpoints=None, regularized: bool = True):
    """dattri's task: the per-sample loss (mean CE over the batch), plus the weight decay term when
    ``regularized``."""
    import torch
    from dattri.task import AttributionTask

    wd = setup["weight_decay"] if regularized else 0.0

    def loss_func(params, data):
        x, y = data
        logits = torch.func.functional_call(model, params, x.unsqueeze(0) if x.dim() == 1 else x)
        y = (y.unsqueeze(0) if y.dim() == 0 else y).long()  # dattri's LiSSA collate casts labels to float
        reg = 0.5 * wd * sum((p * p).sum() for p in params.values())
        return torch.nn.functional.cross_entropy(logits, y) + reg

    return AttributionTask(loss_func=loss_func, model=model,
                           checkpoints=setup["state"] if checkpoints is None else checkpoints)


def worker_dattri(method: str, setup_path: str, scale: float | None) -> dict:
    # dattri's modules are imported here, outside the timed region as ours are (3-6 s on this machine;
    # they load torch._dynamo): they used to be imported inside it for TracIn/grad-dot/grad-cos/exact/CG/LiSSA
    import dattri.algorithm.influence_function  # noqa: F401
    import dattri.algorithm.tracin  # noqa: F401
    import dattri.task  # noqa: F401
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    setup, model = _load(setup_path)
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    train = DataLoader(TensorDataset(setup["x"], setup["y"]), batch_size=TRAIN_CHUNK, shuffle=False)
    test = DataLoader(TensorDataset(setup["xt"], setup["yt"]), batch_size=DATTRI_TEST_BATCH.get(method, len(setup["yt"])),
                      shuffle=False)
    lam = setup["damping"]
    if method == "trak":  # bench_peers_trak.py
        return worker_dattri_trak(setup, model, peak_rss_mb)
    if method in ("arnoldi", "datainf"):  # bench_peers_curvature.py
        return worker_dattri_curvature(method, setup, model, _dattri_task(setup, model, regularized=False),
                                       peak_rss_mb)
    if method in ("tracin", "graddot", "gradcos"):
        from dattri.algorithm.tracin import TracInAttributor

        if method == "tracin":
            states = [c["state"] for c in setup["checkpoints"]]
            weights = torch.tensor([c["lr"] for c in setup["checkpoints"]])
        else:
            states, weights = [setup["state"]], torch.ones(1)
        task = _dattri_task(setup, model, states, regularized=False)
        att = TracInAttributor(task, weight_list=weights, normalized_grad=method == "gradcos",
                               projector_kwargs=None)
        scores = att.attribute(train, test)
    else:
        from dattri.algorithm.influence_function import (
            IFAttributorCG,
            IFAttributorExplicit,
            IFAttributorLiSSA,
        )

        # per-sample gradients of the per-sample loss (as ours), and H + (wd + lam) I: the Hessian of the
        # training objective plus lam (a task with the weight decay in its loss would add wd * theta to
        # every gradient: scores ~4% off ours in |sum| here)
        task = _dattri_task(setup, model, regularized=False)
        lam = lam + setup["weight_decay"]
        if method == "exact":
            att = IFAttributorExplicit(task, regularization=lam)
        elif method == "cg":
            att = IFAttributorCG(task, regularization=lam, max_iter=OURS_OPTIONS["cg"]["max_iter"],
                                 tol=OURS_OPTIONS["cg"]["tol"])
        else:  # dattri's step is v + (1 - damping) h - H_b h / scale: damping = (wd + lam) / scale is ours
            scale = scale or 50.0
            att = IFAttributorLiSSA(task, damping=lam / scale, scaling=scale,
                                    batch_size=OURS_OPTIONS["lissa"]["batch_size"],
                                    recursion_depth=OURS_OPTIONS["lissa"]["depth"])  # its "rev-fwd" fails here
        full = DataLoader(TensorDataset(setup["x"], setup["y"]), batch_size=len(setup["y"]), shuffle=False)
        att.cache(full)
        # dattri's attribute() redoes transform_test_rep (the whole CG / LiSSA solve) for every train batch:
        # one train batch, so it solves once per test batch as ours does (it was 3x the work with 512 rows)
        scores = att.attribute(full, test)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_start_mb": rss0, "checksum": float(scores.double().abs().sum())}


def worker_captum(method: str, setup_path: str) -> dict:
    import torch
    from captum.influence import TracInCP
    from torch.utils.data import TensorDataset

    setup, model = _load(setup_path)
    if method == "arnoldi":  # bench_peers_curvature.py
        return worker_captum_arnoldi(setup, model, peak_rss_mb)
    folder = Path(tempfile.mkdtemp(prefix="captum-ckpt-"))
    paths = []
    for i, c in enumerate(setup["checkpoints"]):
        torch.save({"state": c["state"], "lr": c["lr"]}, folder / f"c{i}.pt")
        paths.append(str(folder / f"c{i}.pt"))

    def load(m, path):
        blob = torch.load(path, weights_only=False)
        m.load_state_dict(blob["state"])
        return blob["lr"]

    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    tracin = TracInCP(model, TensorDataset(setup["x"], setup["y"]), paths, checkpoints_load_func=load,
                      loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"), batch_size=TRAIN_CHUNK,
                      sample_wise_grads_per_batch=True)
    scores = tracin.influence((setup["xt"], setup["yt"]))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_start_mb": rss0, "checksum": float(scores.double().abs().sum())}


# ---------------------------------------------------------------- driver

def peer_installed(python: str, peer: str) -> bool:
    if not Path(python).exists():
        return False
    return subprocess.run([python, "-c", f"import {peer}"], capture_output=True).returncode == 0


def run_worker(python: str, who: str, method: str, setup: Path, threads: int, scale: float | None) -> dict:
    """One fresh process; returns its JSON (with the worker's ``peak_rss_mb``)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    cmd = [python, str(Path(__file__).resolve()), "--worker", who, "--method", method, "--setup", str(setup),
           "--threads", str(threads), "--out", out] + (["--scale", str(scale)] if scale else [])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status = os.waitpid(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {status}"}
    result = json.loads(Path(out).read_text())
    Path(out).unlink()
    return result


def _log(rep: int, method: str, who: str, r: dict) -> None:
    """One line per run as it finishes (a long benchmark cut short keeps what it measured)."""
    what = r["error"] if "error" in r else (f"{r['seconds']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
                                            f"(method {r['peak_rss_mb'] - r['rss_start_mb']:.0f} MB), "
                                            f"sum |scores| {r['checksum']:.6g}")
    print(f"# run {rep + 1} {method} {who}: {what}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    ap.add_argument("--methods", default=",".join(PEERS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker")
    ap.add_argument("--method")
    ap.add_argument("--setup")
    ap.add_argument("--out")
    ap.add_argument("--scale", type=float)
    args = ap.parse_args()
    if args.worker:
        import resource

        cap = int(float(os.environ.get("BENCH_PEERS_MAX_GB", MAX_GB)) * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))  # a runaway peer fails, not the shared machine
        import torch

        torch.set_num_threads(args.threads)
        if args.worker == "ours":
            res = worker_ours(args.method, args.setup)
        elif args.worker == "dattri":
            res = worker_dattri(args.method, args.setup, args.scale)
        elif args.worker == "kronfluence":
            res = worker_kronfluence(args.method, *_load(args.setup), peak_rss_mb)
        else:
            res = worker_captum(args.method, args.setup)
        res["peak_rss_mb"] = peak_rss_mb()
        Path(args.out).write_text(json.dumps(res))
        return

    methods = [m for m in args.methods.split(",") if m]
    installed = {p: peer_installed(args.peer_python, p) for p in {p for m in methods for p in PEERS.get(m, [])}}
    for peer, ok in sorted(installed.items()):
        print(f"# {peer}: {'installed' if ok else 'not installed'} ({args.peer_python})")
    setup = Path(tempfile.mkdtemp(prefix="bench-peers-")) / "setup.pt"
    prepare(setup)
    runs: dict[tuple[str, str], list[dict]] = {}
    scales: dict[str, float] = {}
    for rep in range(args.repeats):
        for m in methods:
            r = run_worker(sys.executable, "ours", m, setup, args.threads, None)
            runs.setdefault((m, "ours"), []).append(r)
            _log(rep, m, "ours", r)
            if "scale" in r:
                scales[m] = r["scale"]
            for peer in PEERS.get(m, []):
                if installed.get(peer):
                    r = run_worker(args.peer_python, peer, m, setup, args.threads, scales.get(m))
                    runs.setdefault((m, peer), []).append(r)
                    _log(rep, m, peer, r)

    print(f"\n{args.threads} threads, median of {args.repeats} interleaved runs; [360 x 1,437] scores, "
          "4,810-param ReLU MLP\n")
    print("| method | ours s | ours peak RSS MB (method) | fastest peer | peer s | peer peak RSS MB (method) "
          "| ratio ours/peer (time) | ratio (peak RSS) |")
    print("|---|---|---|---|---|---|---|---|")
    for m in methods:
        ours = runs[(m, "ours")]
        if any("error" in r for r in ours):
            print(f"| {m} | error: {next(r['error'] for r in ours if 'error' in r)} | | | | | | |")
            continue
        best, best_t = None, float("inf")
        for peer in PEERS.get(m, []):
            rs = runs.get((m, peer))
            if not rs:
                continue
            if any("error" in r for r in rs):
                print(f"# {m} / {peer}: failed: {next(r['error'] for r in rs if 'error' in r)}")
                continue
            t = statistics.median(r["seconds"] for r in rs)
            if t < best_t:
                best, best_t = peer, t
        o_t = statistics.median(r["seconds"] for r in ours)
        o_m = statistics.median(r["peak_rss_mb"] for r in ours)
        o_d = statistics.median(r["peak_rss_mb"] - r["rss_start_mb"] for r in ours)
        if best is None:
            missing = [p for p in PEERS.get(m, []) if not installed.get(p)]
            what = f"{', '.join(missing)}: not installed" if missing else "peer failed (see above)"
            print(f"| {m} | {o_t:.2f} | {o_m:.0f} ({o_d:.0f}) | {what} | | | | |")
            continue
        rs = runs[(m, best)]
        p_m = statistics.median(r["peak_rss_mb"] for r in rs)
        p_d = statistics.median(r["peak_rss_mb"] - r["rss_start_mb"] for r in rs)
        ratio = statistics.median(a["seconds"] / b["seconds"] for a, b in zip(ours, rs, strict=False))
        ratio_m = statistics.median(a["peak_rss_mb"] / b["peak_rss_mb"] for a, b in zip(ours, rs, strict=False))
        print(f"| {m} | {o_t:.2f} | {o_m:.0f} ({o_d:.0f}) | {best} | {best_t:.2f} | {p_m:.0f} ({p_d:.0f}) "
              f"| {ratio:.2f} | {ratio_m:.2f} |")


if __name__ == "__main__":
    main()
