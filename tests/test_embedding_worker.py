"""The background embedding worker (precompute/embedding_worker.py): the same map as in-process, a
fallback when it fails, and no process or file left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from precompute.embedding import umap_embedding
from precompute.embedding_worker import BackgroundEmbedding


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((4, 6)) * 4
    return (centres[rng.integers(0, 4, 300)] + rng.standard_normal((300, 6))).astype(np.float32)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped) counts as gone
        return f.read().split(")")[-1].split()[0] != "Z"


def test_the_worker_draws_the_same_map_bit_for_bit(features, tmp_path):
    logs: list[str] = []
    bg = BackgroundEmbedding(log=logs.append)
    bg.submit(features, tmp_path / "emb", 10, 0.1, 7)
    emb, info = bg.result()
    bg.close()
    assert info["mode"] == "background" and info["worker_seconds"] > 0
    assert emb.shape == (300, 2) and emb.dtype == np.float32
    assert np.array_equal(emb, umap_embedding(features, 10, 0.1, 7))
    assert not (tmp_path / "emb").exists() and not logs
    assert bg.proc.returncode == 0


def test_a_worker_that_dies_falls_back_to_the_map_in_this_process(features, tmp_path):
    logs: list[str] = []
    bg = BackgroundEmbedding(log=logs.append)
    bg.proc.kill()
    bg.proc.wait()
    bg.submit(features, tmp_path / "emb", 10, 0.1, 7)  # broken pipe: noted, not raised
    emb, info = bg.result()
    bg.close()
    assert info["mode"] == "in-process" and "worker" in info["fallback_reason"]
    assert len(logs) == 1 and "computing the map in this process" in logs[0]
    assert np.array_equal(emb, umap_embedding(features, 10, 0.1, 7))


def test_an_error_in_the_worker_is_reported_and_the_parent_raises_it_itself(tmp_path):
    bad = np.full((40, 3), np.nan, np.float32)  # umap refuses non-finite input
    logs: list[str] = []
    bg = BackgroundEmbedding(log=logs.append)
    bg.submit(bad, tmp_path / "emb", 5, 0.1, 0)
    with pytest.raises(ValueError):
        bg.result()
    bg.close()
    assert "the embedding worker failed: ValueError" in logs[0]


def test_close_stops_a_running_worker_and_removes_its_files(features, tmp_path):
    bg = BackgroundEmbedding(log=lambda _m: None)
    bg.submit(features, tmp_path / "emb", 10, 0.1, 7)
    assert (tmp_path / "emb" / "features.npy").is_file()
    bg.close()
    bg.close()  # twice is fine
    assert bg.proc.returncode is not None and not (tmp_path / "emb").exists()


def test_the_worker_exits_when_its_parent_is_killed(tmp_path):
    code = ("import os, sys, time; from precompute.embedding_worker import BackgroundEmbedding; "
            "bg = BackgroundEmbedding(); print(bg.proc.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    assert _alive(worker)
    parent.kill()  # kill -9: no cleanup runs in the parent
    parent.wait()
    deadline = time.time() + 30
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(worker)


def test_a_cli_run_draws_its_map_in_the_background(tmp_path):
    from precompute.cli import main

    out = tmp_path / "run"
    assert main(["precompute", "--sample", "digits", "--methods", "graddot", "--no-mislabels", "--out", str(out),
                 "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["embedding"]["mode"] == "background"
    emb = np.load(out / "arrays" / "embedding.npy")
    features = np.concatenate([np.load(out / "arrays" / "train_features.npy"),
                               np.load(out / "arrays" / "test_features.npy")])
    assert np.array_equal(emb, umap_embedding(features, 15, 0.1, 0))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no work folder left
