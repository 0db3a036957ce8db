"""Bad input: one clear line on stderr, exit status 2, nothing half-written, existing runs untouched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from precompute.config import load_config
from precompute.errors import MethodError
from precompute.pipeline import run_precompute
from sample_data import sample_config_path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "precompute.cli", *args], capture_output=True, text=True,
                          timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def nothing_written(cache: Path) -> bool:
    return not cache.exists() or not any(cache.iterdir())


def test_unknown_method(tmp_path: Path) -> None:
    proc = cli("precompute", "--sample", "digits", "--methods", "exact,magic", "--cache-dir", str(tmp_path / "c"))
    assert_one_line_error(proc, "influence.methods", "'magic'", "graddot")
    assert nothing_written(tmp_path / "c")


def test_bad_config_value_in_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(sample_config_path("digits").read_text().replace("lr = 0.01", "lr = -0.5"))
    proc = cli("precompute", "--config", str(cfg), "--cache-dir", str(tmp_path / "c"))
    assert_one_line_error(proc, "train.lr", "-0.5", "> 0")
    assert nothing_written(tmp_path / "c")


def test_unknown_key_and_bad_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text('name = "x"\n[train]\nepochz = 3\n')
    assert_one_line_error(cli("precompute", "--config", str(cfg)), "train.'epochz'", "epochs")
    cfg.write_text("name = \n")
    assert_one_line_error(cli("precompute", "--config", str(cfg)), str(cfg), "not valid TOML")
    assert_one_line_error(cli("precompute", "--config", str(tmp_path / "nope.toml")), "nope.toml", "not found")


def test_bad_flag_value(tmp_path: Path) -> None:
    proc = cli("precompute", "--sample", "digits", "--label-noise", "1.5", "--cache-dir", str(tmp_path / "c"))
    assert_one_line_error(proc, "data.label_noise", "1.5")
    assert_one_line_error(cli("precompute", "--sample", "cifar"), "--sample", "digits-noisy")


def test_unwritable_output_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = cli("precompute", "--sample", "digits", "--cache-dir", str(blocker / "cache"))
    assert_one_line_error(proc, "cannot write to cache folder", "--cache-dir")
    assert blocker.read_text() == "not a folder"


def test_existing_run_with_different_config_is_refused(digits_run: Path) -> None:
    manifest_before = (digits_run / "manifest.json").read_bytes()
    proc = cli("precompute", "--sample", "digits", "--epochs", "3", "--cache-dir", str(digits_run.parent))
    assert_one_line_error(proc, "different config", "train.epochs: 60 -> 3", "--overwrite")
    assert (digits_run / "manifest.json").read_bytes() == manifest_before
    assert not list(digits_run.parent.glob(".*partial*"))
    same = cli("precompute", "--sample", "digits", "--cache-dir", str(digits_run.parent))
    assert same.returncode == 0 and "up to date" in same.stdout
    assert (digits_run / "manifest.json").read_bytes() == manifest_before


def test_failure_mid_pipeline_leaves_nothing(tmp_path: Path) -> None:
    """A method that refuses after training has started: no run folder, no partial folder."""
    cfg = load_config(sample_config_path("digits"))
    cfg.train.epochs, cfg.train.checkpoints = 2, 1
    cfg.influence.options = {"exact": {"max_params": 10}}
    with pytest.raises(MethodError, match="max_params=10"):
        run_precompute(cfg, cache_dir=tmp_path, progress=False, log=lambda _m: None)
    assert list(tmp_path.iterdir()) == []


def test_non_directory_run_folder_is_not_clobbered(tmp_path: Path) -> None:
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "notes.txt").write_text("mine")
    proc = cli("precompute", "--sample", "digits", "--cache-dir", str(tmp_path))
    line = assert_one_line_error(proc, "is not a run")
    assert "--overwrite" not in line  # never suggest the flag that would replace it (issue 14)
    assert (tmp_path / "digits" / "notes.txt").read_text() == "mine"
