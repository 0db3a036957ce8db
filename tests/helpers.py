"""Small helpers shared by several test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

QUIET = {"progress": False, "log": lambda _m: None}


def copy_run(run: Path, dst: Path) -> Path:
    """A private copy of a built run (without any evaluation), so tests do not share results."""
    out = dst / run.name
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("evaluation"))
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one intra-op thread; restores the previous setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
