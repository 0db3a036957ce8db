"""Shared fixtures: real caches built once per test session with the real pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from precompute.config import load_config
from precompute.pipeline import run_precompute
from sample_data import sample_config_path


def build_sample_run(cache_dir: Path, sample: str, **overrides) -> Path:
    """Run the real precompute on a bundled sample (optionally with dotted overrides); return the run dir."""
    from helpers import build_threads

    from precompute.config import apply_overrides

    cfg = apply_overrides(load_config(sample_config_path(sample)), overrides)
    with build_threads():
        result = run_precompute(cfg, cache_dir=cache_dir, progress=False, log=lambda _m: None)
    return result.path


@pytest.fixture(autouse=True)
def _torch_threads_as_found():
    """Every test leaves torch's intra-op thread count as it found it: float reductions depend on it, and
    a count left at 1 by one test (umap/numba/scikit-learn's OpenMP runtimes can reset it) changed the
    bits a later module compared against."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


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


@pytest.fixture(scope="session")
def shapes_run(tmp_path_factory) -> Path:
    """A user's own image folder (coloured circles/squares/triangles, RGB 16x16 after loading, one
    grayscale and one odd-sized file) through the built-in CNN: see ``test_byo_end_to_end.build_shapes_run``."""
    from test_byo_end_to_end import build_shapes_run

    return build_shapes_run(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def table_run(tmp_path_factory) -> Path:
    """A user's CSV table (4 features, 3 species) through a small MLP; samples are ``[1, 4]`` feature strips."""
    import pandas as pd
    from test_byo_end_to_end import blobs

    root = tmp_path_factory.mktemp("table")
    x, y = blobs(150, 2)
    df = pd.DataFrame(x, columns=["f1", "f2", "f3", "f4"])
    df["species"] = [("setosa", "versicolor", "virginica")[i] for i in y]
    df.to_csv(root / "table.csv", index=False)
    (root / "run.toml").write_text(f"""
name = "table"
[data]
source = "table"
path = "{root / 'table.csv'}"
label_column = "species"
[model]
arch = "mlp"
hidden = [8]
[train]
epochs = 40
batch_size = 32
[influence]
methods = ["exact", "graddot"]
damping = 0.2
[mislabels]
enabled = false
""")
    return run_precompute(load_config(root / "run.toml"), cache_dir=root / "cache", progress=False,
                          log=lambda _m: None).path


from helpers import one_torch_thread  # noqa: E402,F401  (a shared fixture: tests opt in with usefixtures)
