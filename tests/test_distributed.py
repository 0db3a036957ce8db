"""Distributed precompute on torch.distributed (gloo, CPU, 2 processes).

A 2-rank torchrun run equals a 1-rank run (scores, top-k, factors); a rank killed mid-store leaves only
its unfinished chunks and a 1-rank rerun resumes from them; the sharded fits (K-FAC/EK-FAC statistics,
TRAK's kernel) equal the single-process fit; the rank shards of a score matrix merge exactly.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cache_format.runs import RunCache
from precompute.cache.scores import ScoreWriter
from precompute.config import RunConfig, TrainConfig
from precompute.distributed.context import DistContext, init_from_env, use
from precompute.distributed.launch import strip_launcher_args, torchrun_command
from precompute.errors import ConfigError
from precompute.store.stage import KILL_AFTER_ENV, KILL_RANK_ENV

ROOT = Path(__file__).resolve().parent.parent
METHODS = "graddot,ekfac,trak,tracin,exact"
pytestmark = pytest.mark.slow


def _precompute(cache: Path, nproc: int, env: dict[str, str] | None = None, extra: list[str] | None = None,
                name: str = "digits") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "precompute.cli", "precompute", "--sample", "digits", "--cache-dir", str(cache),
           "--name", name, "--methods", METHODS, "--no-mislabels", "--no-progress", "--store-scores", "dense",
           "--chunk-rows", "300", *(extra or [])]
    if nproc > 1:
        cmd += ["--launcher", "torchrun", "--nproc", str(nproc)]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory) -> RunCache:
    cache = tmp_path_factory.mktemp("one_rank")
    out = _precompute(cache, 1)
    assert out.returncode == 0, out.stderr[-3000:]
    return RunCache(cache / "digits")


def _assert_same_cache(a: RunCache, b: RunCache) -> None:
    assert a.manifest["model"]["fingerprint"] == b.manifest["model"]["fingerprint"]
    for rel, info in a.manifest["arrays"].items():
        if not rel.startswith("methods/"):
            continue
        x, y = np.load(a.path / rel), np.load(b.path / rel)
        assert x.shape == y.shape == tuple(info["shape"]), rel
        if x.dtype.kind in "iu":
            np.testing.assert_array_equal(x, y, err_msg=rel)  # top-k indices: identical
        else:
            scale = max(float(np.abs(x).max()), 1e-30)
            np.testing.assert_allclose(y, x, rtol=0, atol=1e-6 * scale, err_msg=rel)


def test_two_ranks_write_the_same_cache_as_one(one_rank, tmp_path):
    out = _precompute(tmp_path, 2)
    assert out.returncode == 0, out.stderr[-3000:]
    two = RunCache(tmp_path / "digits")
    _assert_same_cache(one_rank, two)
    dist = two.manifest["distributed"]
    assert dist["world_size"] == 2 and dist["backend"] == "gloo" and dist["training"] == "rank0"
    for m in METHODS.split(","):
        ranks = two.manifest["methods"][m]["ranks"]
        assert len(ranks) == 2 and all(r["peak_rss_mb"] > 0 for r in ranks)
        store = two.manifest["methods"][m]["store"]
        assert sum(r["chunks_computed"] for r in ranks) == store["chunks"] == store["chunks_computed"]
        assert all(r["chunks_computed"] >= 1 for r in ranks), (m, ranks)  # both ranks did store work
    assert not list(tmp_path.glob(".digits.*")), "no work or partial folder is left behind"


def test_a_killed_rank_leaves_its_chunks_and_one_rank_resumes(one_rank, tmp_path):
    first = _precompute(tmp_path, 2, env={KILL_AFTER_ENV: "1", KILL_RANK_ENV: "1"})
    assert first.returncode != 0
    assert not (tmp_path / "digits").exists()
    work = list(tmp_path.glob(".digits.work-*"))
    assert len(work) == 1
    store = work[0] / "stores" / "graddot"
    n_chunks = -(-json.loads((store / "store.json").read_text())["n"] // 300)
    done = {int(p.name[6:11]) for p in store.glob("chunk_*.done.json")}
    missing = sorted(set(range(n_chunks)) - done)
    assert 1 in done and 3 in missing, (done, missing)  # rank 1 wrote chunk 1, then was killed before 3
    second = _precompute(tmp_path, 1)
    assert second.returncode == 0, second.stderr[-3000:]
    line = re.search(r"\[graddot\] resumed: (\d+) of (\d+) store chunks were complete; computed chunks (.*)",
                     second.stderr)
    assert line, second.stderr[-3000:]
    assert int(line.group(1)) == len(done) and int(line.group(2)) == n_chunks
    computed = [int(x) for part in line.group(3).split(", ") for x in _expand(part)]
    assert computed == missing
    _assert_same_cache(one_rank, RunCache(tmp_path / "digits"))


def _expand(part: str) -> list[int]:
    a, _, b = part.partition("-")
    return list(range(int(a), int(b or a) + 1))


def test_ddp_training_keeps_the_ranks_in_step(one_rank, tmp_path):
    cfg_text = (ROOT / "sample_data" / "digits.toml").read_text().replace("[train]\n", '[train]\ndistributed = "ddp"\n')
    cfg = tmp_path / "ddp.toml"
    cfg.write_text(cfg_text)
    cmd = [sys.executable, "-m", "precompute.cli", "precompute", "--config", str(cfg), "--cache-dir", str(tmp_path),
           "--methods", "graddot", "--no-mislabels", "--no-progress", "--launcher", "torchrun", "--nproc", "2"]
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run = RunCache(tmp_path / "digits")
    assert run.manifest["distributed"]["training"] == "ddp"
    assert run.manifest["config"]["train"]["distributed"] == "ddp"  # another model: another identity
    # the same recipe (global minibatches, mean loss): a model as good as the one-process one
    assert abs(run.manifest["model"]["test_accuracy"] - one_rank.manifest["model"]["test_accuracy"]) < 0.03
    assert "weights identical on every rank" in out.stderr, out.stderr[-3000:]  # checked before the broadcast


# ---------------------------------------------------------------- sharded fits (in-process, spawn)
def _fit_worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world=world, local_rank=rank, local_world=world, backend="gloo")
    use(ctx)
    try:
        torch.save(_fits(ctx), f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()
    # leave without the interpreter's teardown (as the CLI does, precompute.cli.run): a spawned gloo
    # process aborted there in about 1 run in 3 ("terminate called without an active exception"),
    # after its results were saved and the group destroyed
    os._exit(0)


def _fits(ctx: DistContext) -> dict[str, torch.Tensor]:
    """Fitted factors of the sharded methods on a tiny float64 model (4 training batches)."""
    from precompute.compression import CompressionConfig, GradientCompressor
    from precompute.influence import get_estimator
    from precompute.influence._toy import tiny_task

    task, xs, ys = tiny_task("mlp", damping=0.1)
    task.batch_size, task.dist = 16, ctx
    out: dict[str, torch.Tensor] = {}
    for method, fisher in (("kfac", "sampled"), ("ekfac", "ggn")):
        est = get_estimator(method, {"fisher": fisher}).fit(task)
        for i, f in enumerate(est.factors_):
            out[f"{method}.A{i}"], out[f"{method}.S{i}"], out[f"{method}.eig{i}"] = f.A, f.S, f.eig
        out[f"{method}.q"] = est.query_factors(xs, ys)
    out["trak.q"] = get_estimator("trak", {"proj_dim": 32}).fit(task).query_factors(xs, ys)
    task.compressor = GradientCompressor.create(CompressionConfig(kind="factored", dim=16, dense_below=0,
                                                                  dtype="float64"), task.model, task.space,
                                                task.x_train[:2])
    out["ekfac_projected.q"] = get_estimator("ekfac", {"fisher": "sampled"}).fit(task).query_factors(xs, ys)
    return out


def test_sharded_fits_equal_the_single_process_fit(tmp_path):
    single = _fits(DistContext())
    torch.multiprocessing.spawn(_fit_worker, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert set(r0) == set(single) and len(single) > 10
    for key, ref in single.items():
        assert torch.equal(r0[key], r1[key]), key  # every rank holds the same factors
        torch.testing.assert_close(r0[key], ref, rtol=1e-12, atol=1e-14 * float(ref.abs().max()), msg=key)


# ---------------------------------------------------------------- merging shards, launching
def test_rank_shards_of_a_score_matrix_merge_exactly(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(23, 41)).astype(np.float32)
    scores[3, 5] = scores[3, 9]  # ties: broken by the lower index, whoever saw them
    self_inf = rng.normal(size=41)

    class Writer:  # a CacheWriter that keeps arrays in memory
        def __init__(self):
            self.saved = {}

        def open_array(self, name, shape, dtype, method):
            return np.lib.format.open_memmap(tmp_path / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)

        def save_array(self, name, arr, method):
            self.saved[name] = np.array(arr)

    ref_writer, dist_writer = Writer(), Writer()
    ref = ScoreWriter(ref_writer, "m", 23, 41, topk=5, dense=False)
    ref.write_tile(0, 0, scores)
    ref.close(self_inf)
    main, other = ScoreWriter(dist_writer, "m", 23, 41, 5, dense=False), ScoreWriter(None, "m", 23, 41, 5, dense=False)
    for b, r0 in enumerate(range(0, 23, 4)):  # test blocks dealt round-robin, chunks of 10 columns
        sink = main if b % 2 == 0 else other
        for c0 in range(0, 41, 10):
            sink.write_tile(r0, c0, scores[r0:r0 + 4, c0:c0 + 10])
    mine, theirs = self_inf.copy(), self_inf.copy()
    mine[20:], theirs[:20] = 0, 0
    other.save_shard(tmp_path / "rank1.npz", theirs)
    main.absorb_shard(tmp_path / "rank1.npz", mine)
    main.close(mine)
    assert set(ref_writer.saved) == set(dist_writer.saved)
    for name, arr in ref_writer.saved.items():
        if name == "train_net_influence":  # partial sums grouped differently
            np.testing.assert_allclose(dist_writer.saved[name], arr, rtol=1e-6)
        else:
            np.testing.assert_array_equal(dist_writer.saved[name], arr, err_msg=name)
    with pytest.raises(RuntimeError, match="two ranks"):  # a shard absorbed twice is refused
        main.absorb_shard(tmp_path / "rank1.npz", mine)


def test_launcher_rewrites_the_command_for_torchrun():
    argv = ["precompute", "--sample", "digits", "--launcher", "torchrun", "--nproc=3", "--name", "x"]
    assert strip_launcher_args(argv) == ["precompute", "--sample", "digits", "--name", "x"]
    cmd = torchrun_command(argv, 3)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3", "-m"]
    assert cmd[-5:] == ["precompute", "--sample", "digits", "--name", "x"]
    with pytest.raises(ConfigError, match="--nproc"):
        torchrun_command(argv, 0)


def test_bad_settings_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="train.distributed"):
        RunConfig(train=TrainConfig(distributed="mpi")).validate()
    with pytest.raises(ConfigError, match="lbfgs|minibatches"):
        RunConfig(train=TrainConfig(distributed="ddp", optimizer="lbfgs")).validate()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        init_from_env("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match="RANK=5"):
        init_from_env("cpu")


def test_two_ranks_of_the_scale_resnet_stay_under_the_budget(tmp_path):
    """The scale benchmark's 1.2M-parameter ResNet on 5k synthetic samples (compressed gradients): every
    rank's peak RSS stays under the memory budget a single process is given."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_scale import make_data, make_model, write_config

    data = tmp_path / "data"
    make_data(data, 5000, 200)
    src, ckpt = make_model(tmp_path, data, steps=2, threads=1)
    cfg = tmp_path / "resnet.toml"
    write_config(cfg, data, src, ckpt, ["graddot"])
    budget_mb = 3072
    cmd = [sys.executable, "-m", "precompute.cli", "precompute", "--config", str(cfg), "--cache-dir",
           str(tmp_path / "cache"), "--memory-budget", f"{budget_mb}MB", "--device", "cpu", "--no-progress",
           "--launcher", "torchrun", "--nproc", "2"]
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    man = RunCache(tmp_path / "cache" / "resnet").manifest
    entry = man["methods"]["graddot"]
    assert isinstance(entry["compression"], dict) and entry["compression"]["k"] < man["model"]["n_influence_params"]
    ranks = entry["ranks"]
    assert [r["chunks_computed"] > 0 for r in ranks] == [True, True]
    peaks = [*(r["peak_rss_mb"] for r in ranks), *man["peak_rss_mb"].values()]  # ranks' + rank 0's stages
    assert max(peaks) < budget_mb, (peaks, budget_mb)
