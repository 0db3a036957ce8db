"""What precompute writes, a numpy/pandas reader loads with the documented shapes and meanings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cache_format.names import FORMAT_VERSION
from cache_format.runs import RunCache, list_runs

DOC = Path(__file__).resolve().parent.parent / "docs" / "cache-format.md"


def test_manifest_lists_every_array_with_true_shape_and_dtype(digits_run: Path) -> None:
    manifest = json.loads((digits_run / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert "proponent" in manifest["sign_convention"]
    n_train, n_test = manifest["dataset"]["n_train"], manifest["dataset"]["n_test"]
    assert (n_train, n_test) == (1437, 360)
    for rel, info in manifest["arrays"].items():
        if rel.endswith(".npy"):
            arr = np.load(digits_run / rel, mmap_mode="r")
            assert list(arr.shape) == info["shape"], rel
            assert str(arr.dtype) == info["dtype"], rel
    assert set(manifest["methods"]) == {"exact", "graddot", "gradcos", "tracin"}
    assert manifest["model"]["test_accuracy"] > 0.9
    assert {"train", "influence:exact", "embedding", "total"} <= set(manifest["timings"])
    assert manifest["config"]["train"]["seed"] == 0 and "device" not in manifest["config"]
    assert not list(digits_run.parent.glob(".*partial*")), "a partial folder was left behind"


def test_documented_shapes_and_meanings(digits_run: Path) -> None:
    run = RunCache(digits_run)
    n_train, n_test, k = run.n_train, run.n_test, 50
    samples = pd.read_parquet(digits_run / "samples.parquet")
    assert list(samples["split"]) == ["train"] * n_train + ["test"] * n_test
    assert samples.groupby("split")["index"].apply(lambda s: (s.values == np.arange(len(s))).all()).all()
    assert run.array("train_images").shape == (n_train, 8, 8) and run.array("train_images").dtype == np.uint8
    assert run.array("test_probs").shape == (n_test, 10)
    assert np.allclose(run.array("test_probs").sum(1), 1, atol=1e-5)
    assert run.array("embedding").shape == (n_train + n_test, 2)
    test = run.test_samples()
    assert (test["pred"].values == np.asarray(run.array("test_probs")).argmax(1)).all()
    for method in run.methods:
        scores = np.asarray(run.scores(method))
        assert scores.shape == (n_test, n_train) and scores.dtype == np.float32
        assert isinstance(run.scores(method), np.memmap)
        top = run.method_array(method, "top_proponents")
        opp = run.method_array(method, "top_opponents")
        assert top.shape == opp.shape == (n_test, k)
        rows = np.arange(n_test)[:, None]
        pro_s = scores[rows, top]
        assert (np.diff(pro_s, axis=1) <= 0).all() and np.allclose(pro_s[:, 0], scores.max(1))
        assert np.allclose(scores[rows, opp][:, 0], scores.min(1))
        assert np.allclose(run.method_array(method, "top_proponent_scores"), pro_s)
        helped = run.method_array(method, "train_top_helped")
        assert helped.shape == (n_train, k)
        assert np.allclose(scores[helped[:, 0], np.arange(n_train)], scores.max(0))
        hurt = run.method_array(method, "train_top_hurt")
        assert np.allclose(scores[hurt[:, 0], np.arange(n_train)], scores.min(0))
        assert np.allclose(run.method_array(method, "train_net_influence"), scores.mean(0), atol=1e-6)
        assert run.method_array(method, "self_influence").shape == (n_train,)


def test_influence_makes_sense_on_digits(digits_run: Path) -> None:
    """Top proponents of a correctly classified test digit mostly carry its label (exact method)."""
    run = RunCache(digits_run)
    test, train = run.test_samples(), run.train_samples()
    top = run.method_array("exact", "top_proponents")[:, :10]
    correct = test["correct"].values
    same = (train["label"].values[top] == test["label"].values[:, None])[correct].mean()
    assert same > 0.8, f"only {same:.2f} of top-10 proponents share the test label"
    opp = run.method_array("exact", "top_opponents")[:, :10]
    assert (train["label"].values[opp] == test["label"].values[:, None])[correct].mean() < same


def test_documented_pandas_example_runs(digits_run: Path, capsys) -> None:
    code = re.search(r"## Loading with numpy and pandas\s+```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 6
    exec(code.replace('"cache/digits"', repr(str(digits_run))), {})
    out = capsys.readouterr().out
    assert "score" in out and len(out.strip().splitlines()) == 11


def test_list_runs_reports_good_and_broken(digits_run: Path, tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({"format_version": 0}))
    runs = {r.name: r for r in list_runs(tmp_path)}
    assert not runs["broken"].ok and "influence-explorer precompute" in runs["broken"].problem
    assert not runs["old"].ok and "version 0" in runs["old"].problem
    good = list_runs(digits_run.parent)
    assert any(r.ok and r.name == "digits" and r.methods for r in good)


@pytest.mark.parametrize("method", ["nonexistent"])
def test_reader_names_missing_method(digits_run: Path, method: str) -> None:
    with pytest.raises(KeyError, match="exact"):
        RunCache(digits_run).scores(method)
