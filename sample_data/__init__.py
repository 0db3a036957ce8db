"""Bundled sample run configs (TOML). The data itself is scikit-learn's digits: no download."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_names() -> list[str]:
    """Names accepted by ``influence-explorer precompute --sample NAME``."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def sample_config_path(name: str) -> Path:
    """Path of the bundled config for sample ``name``."""
    return Path(str(resources.files(__name__) / f"{name}.toml"))
