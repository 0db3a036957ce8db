"""Security on the precompute side (issue 14): ``evaluate`` treats a cache as data. It never imports
the ``model.factory`` / ``data.factory`` a manifest names unless the user passes ``--trust-code``
(and then only the file whose sha256 precompute recorded), never loads checkpoint paths from outside
the run, and answers every hostile cache of ``tests/hostile_caches.py`` with one line. The image
folder loader refuses symlinks out of the data root.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hostile_caches import VARIANTS, make_hostile_caches
from PIL import Image

from precompute.cli import main

#: evaluate with every part off: opens the run, loads data, model and scores, writes results
QUICK = ("--no-lds", "--no-loo", "--no-brittleness", "--no-damping", "--no-agreement", "--no-mislabels",
         "--workers", "1", "--no-progress")


def _evaluate(capsys, run: Path, *flags: str) -> tuple[int, str]:
    rc = main(["evaluate", str(run), *QUICK, *flags])
    return rc, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def hostile(digits_run: Path, tmp_path_factory) -> dict[str, Path]:
    return make_hostile_caches(digits_run, tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("variant", [v.name for v in VARIANTS if v.names is not None])
def test_evaluate_answers_every_hostile_cache_with_one_line(hostile: dict[str, Path], capsys, variant: str):
    run = hostile[variant]
    rc, err = _evaluate(capsys, run)
    line = _one_line(err)
    assert rc == 2
    named = next(v.names for v in VARIANTS if v.name == variant)
    assert named in line or "manifest.json" in line, line
    assert "/etc/passwd" not in line or "checkpoint" in line
    assert not (run / "evaluation").exists()  # nothing written into a damaged run


def test_evaluate_runs_on_the_markdown_variant(hostile: dict[str, Path], capsys):
    rc, err = _evaluate(capsys, hostile["markdown"])
    assert rc == 0, err


EVIL = """from pathlib import Path
Path({marker!r}).write_text("code from a cache ran")
def make_model():
    raise SystemExit("never")
make_datasets = make_model
"""


def _copy(digits_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "cache" / "digits"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("evaluation"))
    return run


def _edit_config(run: Path, **sections) -> None:
    m = json.loads((run / "manifest.json").read_text())
    for section, values in sections.items():
        m["config"][section].update(values)
    (run / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("where", ["model", "data"])
def test_evaluate_never_runs_code_a_manifest_names(digits_run: Path, tmp_path: Path, capsys, where: str):
    run = _copy(digits_run, tmp_path)
    marker, evil = tmp_path / "ran.txt", tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    spec = f"{evil}:{'make_model' if where == 'model' else 'make_datasets'}"
    _edit_config(run, **({"model": {"factory": spec}} if where == "model" else
                         {"data": {"source": "factory", "factory": spec}}))
    rc, err = _evaluate(capsys, run)
    line = _one_line(err)
    assert rc == 2 and f"{where}.factory" in line and "--trust-code" in line and "manifest.json" in line
    # --trust-code: only the very file precompute recorded (here none is recorded)
    rc, err = _evaluate(capsys, run, "--trust-code")
    assert rc == 2 and "no sha256 recorded" in _one_line(err)
    # a recorded sha256 that the file no longer matches (edited since)
    sha = hashlib.sha256(b"the file precompute used").hexdigest()
    _edit_config(run, **{where: {"factory_sha256": sha}})
    rc, err = _evaluate(capsys, run, "--trust-code")
    assert rc == 2 and "changed since the run was built" in _one_line(err)
    assert not marker.exists()  # the file was never imported


def test_trust_code_runs_the_users_own_factory_run(tmp_path: Path, capsys):
    """The opt-in works: a run built from the user's own factory evaluates with --trust-code only."""
    import torch

    (tmp_path / "model.py").write_text("import torch\ndef make_model():\n    return torch.nn.Sequential("
                                       "torch.nn.Flatten(), torch.nn.Linear(64, 10))\n")
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).state_dict(), tmp_path / "w.pt")
    (tmp_path / "run.toml").write_text('name = "mine"\n[model]\nfactory = "model.py:make_model"\ncheckpoint = '
                                       '"w.pt"\n[influence]\nmethods = ["graddot"]\n[mislabels]\nenabled = false\n')
    assert main(["precompute", "--config", str(tmp_path / "run.toml"), "--cache-dir", str(tmp_path / "cache"),
                 "--no-progress"]) == 0
    run = tmp_path / "cache" / "mine"
    m = json.loads((run / "manifest.json").read_text())
    assert m["config"]["model"]["factory_sha256"] == hashlib.sha256((tmp_path / "model.py").read_bytes()).hexdigest()
    assert all(len(c["sha256"]) == 64 for c in m["model"]["checkpoints"])
    capsys.readouterr()
    rc, err = _evaluate(capsys, run)
    assert rc == 2 and "--trust-code" in _one_line(err)
    rc, err = _evaluate(capsys, run, "--trust-code")
    assert rc == 0, err


@pytest.mark.parametrize("path", ["/etc/passwd", "../../x.pt", "checkpoints/../../../etc/passwd"])
def test_checkpoint_paths_must_stay_inside_the_run(digits_run: Path, tmp_path: Path, path: str):
    from precompute.errors import CacheError
    from precompute.evaluation.context import checkpoint_files

    run = _copy(digits_run, tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    m["model"]["checkpoints"][-1]["path"] = path
    with pytest.raises(CacheError, match="is not inside the run"):
        checkpoint_files(run, m)


def test_checkpoint_sha256_is_checked(digits_run: Path, tmp_path: Path, capsys):
    run = _copy(digits_run, tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    last = run / m["model"]["checkpoints"][-1]["path"]
    m["model"]["checkpoints"][-1]["sha256"] = hashlib.sha256(last.read_bytes()).hexdigest()
    (run / "manifest.json").write_text(json.dumps(m))
    import torch

    state = torch.load(last, weights_only=True)
    next(iter(state.values())).add_(1.0)
    torch.save(state, last)  # swapped weights: a valid file, not the one recorded
    rc, err = _evaluate(capsys, run)
    assert rc == 2 and "does not match the sha256 recorded" in _one_line(err)


def test_image_folder_refuses_symlinks_out_of_the_data_root(tmp_path: Path):
    from precompute.data.image_folder import load_image_folder
    from precompute.errors import DataError

    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((4, 4), 60 * i, np.uint8)).save(root / c / f"{i}.png")
    secret = tmp_path / "private"
    secret.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(secret / "id.png")
    (root / "a" / "link.png").symlink_to(secret / "id.png")
    with pytest.raises(DataError, match=r"link\.png: a symbolic link to .*outside data.path"):
        load_image_folder(root)
    (root / "a" / "link.png").unlink()
    (root / "c").symlink_to(secret, target_is_directory=True)  # a class folder linked out
    with pytest.raises(DataError, match="outside data.path"):
        load_image_folder(root)
    (root / "c").unlink()
    (root / "a" / "inside.png").symlink_to(root / "b" / "0.png")  # links inside the root are fine
    assert load_image_folder(root).n_train > 0
