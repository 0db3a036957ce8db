"""Shared fixtures: real caches built once per test session with the real pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from precompute.config import load_config
from precompute.pipeline import run_precompute
from sample_data import sample_config_path


def build_sample_run(cache_dir: Path, sample: str, **overrides) -> Path:
    """Run the real precompute on a bundled sample (optionally with dotted overrides); return the run dir."""
    from precompute.config import apply_overrides

    cfg = apply_overrides(load_config(sample_config_path(sample)), overrides)
    result = run_precompute(cfg, cache_dir=cache_dir, progress=False, log=lambda _m: None)
    return result.path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A cache folder shared by the session's sample runs."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def digits_run(cache_dir: Path) -> Path:
    """The bundled ``digits`` sample (MLP; exact, graddot, gradcos, tracin), built once per session."""
    return build_sample_run(cache_dir, "digits")


@pytest.fixture(scope="session")
def noisy_run(cache_dir: Path) -> Path:
    """The bundled ``digits-noisy`` sample (10% flipped training labels, ground truth recorded) with
    mislabel rankings, built once per session. Influence methods are limited to the fast graddot and
    tracin to keep the session short; the mislabel stage (OGA, loss, cleanlab k-fold) runs in full."""
    return build_sample_run(cache_dir, "digits-noisy", **{"influence.methods": ["graddot", "tracin"]})


@pytest.fixture(scope="session")
def logreg_run(cache_dir: Path) -> Path:
    """The bundled ``digits-logreg`` sample (convex softmax regression, L-BFGS; exact, graddot, gradcos,
    tracin), built once per session. Mislabel rankings are skipped (no label noise; faster)."""
    from precompute.config import RunConfig

    overrides = {"mislabels.enabled": False} if hasattr(RunConfig(), "mislabels") else {}
    return build_sample_run(cache_dir, "digits-logreg", **overrides)
