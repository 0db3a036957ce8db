"""Methods that cannot fit are refused up front, with the sizes they would need and what would work."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from precompute.errors import ConfigError
from precompute.influence import get_estimator
from precompute.store import feasibility
from precompute.store.feasibility import check_methods_fit


def _ests(*names: str) -> dict:
    return {n: get_estimator(n) for n in names}


def test_exact_hessian_above_the_budget_is_refused_with_its_size(tmp_path: Path) -> None:
    p = 20_000  # H is 20k x 20k float64 = 3.0 GB, twice for the factor
    with pytest.raises(ConfigError) as err:
        check_methods_fit(_ests("graddot", "exact"), 100, p, 4, 2 << 30, tmp_path, compressed=False)
    msg = str(err.value)
    assert "'exact'" in msg and "6.0 GB" in msg and "memory budget of 2.0 GB" in msg
    assert "graddot" in msg and "trak" in msg  # the methods that would work
    check_methods_fit(_ests("graddot", "exact"), 100, p, 4, 8 << 30, tmp_path, compressed=False)  # fits: no error


def test_arnoldi_basis_counts_its_krylov_dimension(tmp_path: Path) -> None:
    est = get_estimator("arnoldi", {"n_iter": 50, "rank": 10})
    need, what = feasibility.resident_bytes(est, 1_000_000)
    assert need == 51 * 1_000_000 * 8 and "Krylov" in what


def test_exact_gradient_store_larger_than_the_disk_is_refused(tmp_path: Path, monkeypatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(feasibility.shutil, "disk_usage", lambda _p: usage._replace(free=10 << 30))
    n, p = 50_000, 1_200_000  # 240 GB of float32 gradients
    with pytest.raises(ConfigError, match=r"'cg' needs its exact per-sample gradients.*223\.5 GB.*10\.0 GB free"):
        check_methods_fit(_ests("cg"), n, p, 4, 4 << 30, tmp_path, compressed=True)
    # the same sizes are fine for a method that runs on the compressed store
    check_methods_fit(_ests("graddot", "trak"), n, p, 4, 4 << 30, tmp_path, compressed=True)
    check_methods_fit(_ests("representer"), n, p, 4, 4 << 30, tmp_path, compressed=True)  # rows are [C d]
    # ...but not when the run has no compressor (it would store exact gradients too)
    with pytest.raises(ConfigError, match="'graddot'"):
        check_methods_fit(_ests("graddot"), n, p, 4, 4 << 30, tmp_path, compressed=False)


def test_the_cli_refuses_before_training(tmp_path: Path) -> None:
    cache = tmp_path / "c"
    proc = subprocess.run([sys.executable, "-m", "precompute.cli", "precompute", "--sample", "digits", "--methods",
                           "graddot,exact", "--memory-budget", "64MB", "--cache-dir", str(cache)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: influence.methods: 'exact'"), proc.stderr
    assert "(89 MB), above the memory budget of 64 MB" in errors[0] and "--memory-budget" in errors[0]
    assert "Traceback" not in proc.stderr
    assert "[train]" not in proc.stdout + proc.stderr  # refused before the training stage
    assert not cache.exists() or not any(p for p in cache.iterdir() if not p.name.startswith("."))
