"""Dropping reviewed training samples (``data.exclude`` / ``--exclude``): the review page's excluded
samples CSV removes them from the next run; the rest keep their source index, labels and thumbnails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cache_format.runs import RunCache
from precompute.config import DataConfig
from precompute.data import load_dataset
from precompute.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parent.parent


def _csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _load(**kw) -> object:
    cfg = DataConfig(**kw)
    cfg.validate()
    return load_dataset(cfg)


def test_excluded_samples_leave_the_training_split(tmp_path):
    full = _load()
    drop = [0, 5, 700]
    override = _csv(tmp_path / "labels.csv", "index,label\n5,3\n6,3\n")
    ds = _load(exclude=_csv(tmp_path / "ex.csv", "index\n" + "\n".join(map(str, drop)) + "\n"),
               labels_override=override)
    keep = np.setdiff1d(np.arange(full.n_train), drop)
    assert ds.n_train == full.n_train - 3 and ds.n_test == full.n_test
    np.testing.assert_array_equal(ds.train_source_index, full.train_source_index[keep])
    np.testing.assert_array_equal(ds.x_train, full.x_train[keep])
    np.testing.assert_array_equal(ds.images_train, full.images_train[keep])
    want = full.y_train.copy()
    want[6] = 3  # the override uses the reviewed run's indices too: sample 6 is relabelled, 5 dropped
    np.testing.assert_array_equal(ds.y_train, want[keep])
    assert ds.extra["excluded"]["rows"] == 3 and ds.fingerprint() != full.fingerprint()


def test_a_streamed_dataset_stays_lazy_and_shows_the_right_thumbnails(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "npz"
    folder.mkdir()
    for split, n in (("train", 40), ("test", 10)):
        np.save(folder / f"X_{split}.npy", rng.normal(size=(n, 3, 8, 8)).astype(np.float32))
        np.save(folder / f"y_{split}.npy", rng.integers(0, 3, n))
    full = _load(source="npz", path=str(folder))
    drop = [1, 2, 3, 20, 39]
    ds = _load(source="npz", path=str(folder), exclude=_csv(tmp_path / "ex.csv", "index\n" + "\n".join(map(str, drop))))
    keep = np.setdiff1d(np.arange(40), drop)
    assert ds.streamed and ds.n_train == 35
    np.testing.assert_array_equal(ds.x_train.read(np.arange(35)).numpy(), full.x_train.read(keep).numpy())
    got, _ = ds.images_train.render(0, 35)
    want, _ = full.images_train.render(0, 40)
    np.testing.assert_array_equal(got, want[keep])


@pytest.mark.parametrize(("text", "needle"), [
    ("row\n1\n", "needs an 'index' column"),
    ("index\n1\nseven\n", "line 3: index 'seven'"),
    ("index\n99999\n", "line 2: index '99999' is not a training index"),
    ("index\n-1\n", "line 2"),
])
def test_a_bad_exclude_file_is_named_with_its_line(tmp_path, text, needle):
    path = _csv(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=needle) as err:
        _load(exclude=path)
    assert "bad.csv" in str(err.value) and "\n" not in str(err.value)


def test_excluding_everything_or_a_missing_file_is_refused(tmp_path):
    everything = _csv(tmp_path / "all.csv", "index\n" + "\n".join(map(str, range(1437))))
    with pytest.raises(DataError, match="every training sample"):
        _load(exclude=everything)
    with pytest.raises(ConfigError, match="exclude file not found"):
        DataConfig(exclude=str(tmp_path / "missing.csv")).validate()


def test_precompute_with_exclude_writes_a_run_without_them(tmp_path):
    ex = _csv(tmp_path / "digits.excluded.csv", "index\n3\n4\n1000\n")
    cmd = [sys.executable, "-m", "precompute.cli", "precompute", "--sample", "digits", "--cache-dir", str(tmp_path),
           "--name", "cleaned", "--methods", "graddot", "--no-mislabels", "--no-progress", "--exclude", ex]
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = RunCache(tmp_path / "cleaned")
    assert run.manifest["dataset"]["n_train"] == 1434
    assert run.manifest["dataset"]["excluded"] == {"path": ex, "rows": 3}
    assert run.manifest["config"]["data"]["exclude_sha256"]  # another file: another run identity
    samples = pd.read_parquet(run.path / "samples.parquet")
    train = samples[samples["split"] == "train"]
    full = _load()
    assert set(train["source_index"]) == set(full.train_source_index) - set(full.train_source_index[[3, 4, 1000]])
