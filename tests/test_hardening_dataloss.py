"""Data loss and stale results (issue 14): ``--overwrite`` only ever replaces a folder that is a run,
and a run is never "up to date" after its data file or its checkpoint weights changed. Run through
the real CLI (``precompute.cli.main``; one case as a subprocess), asserting the one-line error, the
exit code and the state on disk.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from precompute.cli import main

REPO = Path(__file__).resolve().parent.parent


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_overwrite_never_replaces_a_folder_that_is_not_a_run(tmp_path: Path):
    precious = tmp_path / "my documents"
    (precious / "thesis").mkdir(parents=True)
    (precious / "thesis" / "chapter1.tex").write_text("years of work")
    before = _tree(precious)
    proc = subprocess.run([sys.executable, "-m", "precompute.cli", "precompute", "--sample", "digits", "--out",
                           str(precious), "--overwrite", "--no-progress"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a run" in lines[0] and "my documents" in lines[0]
    assert "--overwrite" not in lines[0]  # the refusal never suggests the flag that would delete it
    assert _tree(precious) == before and sorted(p.name for p in tmp_path.iterdir()) == ["my documents"]


@pytest.mark.parametrize("kind", ["no-manifest", "garbage-manifest", "list-manifest", "a-file"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_non_run_targets_are_refused_with_or_without_overwrite(tmp_path: Path, capsys, kind: str, overwrite: bool):
    target = tmp_path / "target"
    if kind == "a-file":
        target.write_text("notes")
    else:
        target.mkdir()
        (target / "data.csv").write_text("a,b\n1,2\n")
        if kind != "no-manifest":
            (target / "manifest.json").write_text("{not json" if kind == "garbage-manifest" else "[1, 2]")
    before = target.read_bytes() if kind == "a-file" else _tree(target)
    rc, _out, err = _cli(capsys, "precompute", "--sample", "digits", "--out", str(target), "--no-progress",
                         *(["--overwrite"] if overwrite else []))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "not a run" in err and "--overwrite" not in err
    assert (target.read_bytes() if kind == "a-file" else _tree(target)) == before


def _write_table(path: Path, shift: float = 0.0) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    x = rng.normal(size=(60, 3)) + y[:, None] * 2.0
    x[0, 0] += shift
    df = pd.DataFrame(x, columns=["f1", "f2", "f3"])
    df["kind"] = np.array(["a", "b", "c"])[y]
    df.to_csv(path, index=False)


TABLE_CFG = """name = "tbl"
[data]
source = "table"
path = "data.csv"          # relative: resolved against this file's folder, not the current one
label_column = "kind"
[model]
arch = "mlp"
hidden = [4]
[train]
epochs = 3
[influence]
methods = ["graddot"]
[embedding]
n_neighbors = 5
[mislabels]
enabled = false
"""


def test_changed_data_is_never_up_to_date(tmp_path: Path, capsys, monkeypatch):
    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    proj.mkdir()
    elsewhere.mkdir()
    _write_table(proj / "data.csv")
    (proj / "run.toml").write_text(TABLE_CFG)
    cache = tmp_path / "team's cache"  # a space and a quote: the printed command must be shell-quoted
    monkeypatch.chdir(elsewhere)
    argv = ("precompute", "--config", str(proj / "run.toml"), "--cache-dir", str(cache), "--no-progress")
    rc, out, err = _cli(capsys, *argv)
    assert rc == 0, err
    cmd = next(line for line in out.splitlines() if line.startswith("open it with: "))
    assert shlex.split(cmd.removeprefix("open it with: ")) == ["influence-explorer", "app", "--cache-dir", str(cache)]
    run = cache / "tbl"
    rc, out, _err = _cli(capsys, *argv)
    assert rc == 0 and "(up to date)" in out  # same config, same data

    (run / "evaluation" / "groundtruth" / "lds-k").mkdir(parents=True)
    (run / "evaluation" / "groundtruth" / "lds-k" / "meta.json").write_text("{}")
    before = _tree(run)
    _write_table(proj / "data.csv", shift=5.0)  # one value of the data file changed
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2 and "up to date" not in out
    assert len(err.strip().splitlines()) == 1 and "different data" in err and "--overwrite" in err
    assert _tree(run) == before  # refused: the old run untouched

    rc, out, err = _cli(capsys, *argv, "--overwrite")
    assert rc == 0, err
    assert (run / "evaluation" / "groundtruth" / "lds-k" / "meta.json").is_file()  # ground truth kept
    rc, out, _err = _cli(capsys, *argv)
    assert rc == 0 and "(up to date)" in out
    assert sorted(p.name for p in cache.iterdir()) == ["tbl"]  # nothing hidden left behind


MODEL_PY = """import torch
def make_model():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
"""


def test_changed_checkpoint_weights_are_never_up_to_date(tmp_path: Path, capsys):
    import torch

    (tmp_path / "model.py").write_text(MODEL_PY)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "run.toml").write_text('name = "mine"\n[model]\nfactory = "model.py:make_model"\n'
                                       'checkpoint = "weights.pt"\n[influence]\nmethods = ["graddot"]\n'
                                       '[mislabels]\nenabled = false\n')
    argv = ("precompute", "--config", str(tmp_path / "run.toml"), "--cache-dir", str(tmp_path / "cache"),
            "--no-progress")
    rc, _out, err = _cli(capsys, *argv)
    assert rc == 0, err
    rc, out, _err = _cli(capsys, *argv)
    assert rc == 0 and "(up to date)" in out
    before = _tree(tmp_path / "cache" / "mine")
    with torch.no_grad():
        model[1].weight[0, 0] += 1.0  # retrained: same file name, other weights
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2 and "up to date" not in out
    assert len(err.strip().splitlines()) == 1 and "model.checkpoint_sha256" in err and "--overwrite" in err
    assert _tree(tmp_path / "cache" / "mine") == before
