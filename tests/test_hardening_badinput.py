"""Bad input (issue 14): each is one line ``error: ...`` naming the file/field and the fix, exit code 2,
no traceback and no half-written run. Config types, a user's model and checkpoints, hostile images,
header-only tables, relative paths in a config file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from precompute.cli import main
from precompute.config import load_config
from precompute.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parent.parent


def _run(capsys, tmp_path: Path, cfg_text: str, *flags: str) -> tuple[int, str]:
    cfg = tmp_path / "run.toml"
    cfg.write_text(cfg_text)
    rc = main(["precompute", "--config", str(cfg), "--cache-dir", str(tmp_path / "cache"), "--no-progress", *flags])
    err = capsys.readouterr().err
    return rc, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("[")]  # stage log lines
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _no_run(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert not cache.exists() or sorted(p.name for p in cache.iterdir()) == [], list(cache.iterdir())


def test_quoted_number_is_one_line_through_the_real_cli(tmp_path: Path):
    (tmp_path / "run.toml").write_text('name = "a"\n[train]\nlr = "0.01"\n')
    proc = subprocess.run([sys.executable, "-m", "precompute.cli", "precompute", "--config", str(tmp_path / "run.toml"),
                           "--cache-dir", str(tmp_path / "cache")], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert "run.toml" in line and "train.lr must be a number" in line and "'0.01'" in line
    _no_run(tmp_path)


@pytest.mark.parametrize("text, key", [
    ('[train]\nlr = "0.01"', "train.lr"),
    ('[data]\ntest_fraction = "0.2"', "data.test_fraction"),
    ('[model]\nhidden = 32', "model.hidden"),
    ('[model]\nhidden = [32, "64"]', "model.hidden"),
    ('[train]\nepochs = true', "train.epochs"),  # booleans are not counts
    ('[train]\nweight_decay = false', "train.weight_decay"),
    ('[mislabels]\nenabled = 1', "mislabels.enabled"),
    ('[data]\nimage_size = 64', "data.image_size"),
    ('[data]\nclass_names = "a,b"', "data.class_names"),
    ('[influence]\ntopk = 5.0', "influence.topk"),
    ('[influence]\noptions = 3', "influence.options"),
    ('[embedding]\nmin_dist = "0.1"', "embedding.min_dist"),
    ('chunk_rows = true', "chunk_rows"),
])
def test_every_config_field_is_type_checked(tmp_path: Path, capsys, text: str, key: str):
    rc, err = _run(capsys, tmp_path, f'name = "a"\n{text}\n')
    assert rc == 2
    line = _one_error_line(err)
    assert "run.toml" in line and f" {key} must be " in line and "fix it" in line


def test_name_and_methods_types(tmp_path: Path, capsys):
    rc, err = _run(capsys, tmp_path, "name = 5\n")
    assert rc == 2 and "name must be a string" in _one_error_line(err)
    rc, err = _run(capsys, tmp_path, 'name = "a"\n[influence]\nmethods = "graddot"\n')
    assert rc == 2 and "influence.methods must be a list of strings" in _one_error_line(err)
    rc, err = _run(capsys, tmp_path, 'name = "a"\n', "--damping", "inf")
    assert rc == 2 and "influence.damping" in _one_error_line(err)


def test_image_size_has_a_documented_limit(tmp_path: Path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "run.toml").write_text('[data]\nsource = "image_folder"\npath = "imgs"\nimage_size = [20000, 20000]\n')
    with pytest.raises(ConfigError, match=r"data.image_size: must be at most 4096 pixels a side"):
        load_config(tmp_path / "run.toml").validate()


def test_relative_paths_are_resolved_against_the_config_files_folder(tmp_path: Path, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "data.csv").write_text("a,label\n1,x\n")
    (proj / "run.toml").write_text('[data]\nsource = "table"\npath = "data.csv"\n')
    monkeypatch.chdir(tmp_path)  # data.csv is not in the current folder
    cfg = load_config(proj / "run.toml").validate()
    assert cfg.data.path == str((proj / "data.csv").resolve())


def test_header_only_csv_says_it_has_no_rows(tmp_path: Path, capsys):
    (tmp_path / "t.csv").write_text("f1,f2,label\n")
    rc, err = _run(capsys, tmp_path, 'name = "a"\n[data]\nsource = "table"\npath = "t.csv"\n')
    line = _one_error_line(err)
    assert rc == 2 and "t.csv" in line and "has no rows" in line and "not numeric" not in line
    _no_run(tmp_path)


MODELS = {
    "raises": "def make_model():\n    raise ValueError('cannot build it')\n",
    "tuple": ("import torch\nclass M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
              "        self.l = torch.nn.Linear(64, 10)\n    def forward(self, x):\n"
              "        return self.l(x.flatten(1)), x\ndef make_model():\n    return M()\n"),
    "ok": ("import torch\ndef make_model():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
           "torch.nn.Linear(64, 10))\n"),
}


def _model_cfg(tmp_path: Path, kind: str, weights: str) -> str:
    (tmp_path / "model.py").write_text(MODELS[kind])
    return (f'name = "a"\n[model]\nfactory = "model.py:make_model"\ncheckpoint = "{weights}"\n'
            '[influence]\nmethods = ["graddot"]\n[mislabels]\nenabled = false\n')


def _save_weights(path: Path, nan: bool = False, tuple_model: bool = False) -> None:
    import torch

    lin = torch.nn.Linear(64, 10)
    state = {f"{'l' if tuple_model else '1'}.{k}": v for k, v in lin.state_dict().items()}
    if nan:
        next(iter(state.values()))[0, 0] = float("nan")
    torch.save(state, path)


@pytest.mark.parametrize("case, needle", [
    ("raises", "calling"), ("tuple", "returns a tuple, not a tensor of logits"),
    ("text-pt", "not a readable PyTorch checkpoint"), ("nan-weights", "NaN or inf"),
])
def test_a_users_model_that_misbehaves_is_one_line(tmp_path: Path, capsys, case: str, needle: str):
    weights = tmp_path / "weights.pt"
    if case == "text-pt":
        weights.write_text("these are not weights\n" * 10)
    else:
        _save_weights(weights, nan=case == "nan-weights", tuple_model=case == "tuple")
    kind = {"raises": "raises", "tuple": "tuple"}.get(case, "ok")
    rc, err = _run(capsys, tmp_path, _model_cfg(tmp_path, kind, "weights.pt"))
    line = _one_error_line(err)
    assert rc == 2 and needle in line, line
    assert ("model.py" in line or "model.factory" in line) if kind != "ok" else "weights.pt" in line
    _no_run(tmp_path)


def _bomb(path: Path) -> None:
    """A small PNG whose header claims 10,000 x 10,000 pixels (100 M: over the 50 M pixel limit)."""
    Image.new("1", (10_000, 10_000)).save(path)


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 40 * i + (100 if c == "b" else 0), np.uint8)).save(root / c / f"{i}.png")
    return root


def test_decompression_bomb_is_refused_or_skipped_never_decoded(tmp_path: Path, capsys):
    from precompute.data.image_folder import load_image_folder

    root = _folder(tmp_path)
    _bomb(root / "a" / "bomb.png")
    assert (root / "a" / "bomb.png").stat().st_size < 1_000_000
    with pytest.raises(DataError, match=r"bomb\.png: cannot read image \(too large: 10000x10000 pixels"):
        load_image_folder(root, mode="L", size=(8, 8))
    ds = load_image_folder(root, mode="L", size=(8, 8), on_corrupt="skip")  # skipped like a corrupt file
    assert ds.extra["skipped_corrupt"] == [str(root / "a" / "bomb.png")] and ds.n_train + ds.n_test == 8
    rc, err = _run(capsys, tmp_path, 'name = "a"\n[data]\nsource = "image_folder"\npath = "imgs"\n'
                   'image_mode = "L"\nimage_size = [8, 8]\n')
    assert rc == 2 and "bomb.png" in _one_error_line(err) and "data.on_corrupt" in err
    _no_run(tmp_path)


def test_oversized_images_without_image_size_ask_for_one(tmp_path: Path):
    from precompute.data.image_folder import load_image_folder

    root = _folder(tmp_path)
    for p in root.rglob("*.png"):
        Image.new("L", (5000, 10)).save(p)
    with pytest.raises(DataError, match=r"too large a model input.*set data.image_size"):
        load_image_folder(root)
