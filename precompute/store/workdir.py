"""The resumable work folder of a run being built: ``<cache-dir>/.<run>.work-<key>/``.

It sits beside the run (not inside the partial folder, which is removed on failure) and holds the
gradient stores, so a rerun of the same command (same config identity: same ``key``) resumes from
the completed chunks after a crash or ``kill -9``. It is removed once the run is finalized; work
folders of the same run made for another config are removed when a new build starts. A build that
fails keeps it only when it holds completed chunks (then a rerun resumes); otherwise nothing is left.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from precompute.errors import CacheError
from precompute.store.gradient_store import GradientStore, StoreSpec


def identity_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


class WorkDir:
    def __init__(self, run_dir: Path, identity: dict[str, Any], log: Callable[[str], None] = print,
                 clean: bool = True):
        """``clean``: remove this run's work folders of other configs (rank 0 of a torchrun launch only)."""
        self.run_dir, self.log = Path(run_dir), log
        self.root = self.run_dir.parent / f".{self.run_dir.name}.work-{identity_key(identity)}"
        for other in self.run_dir.parent.glob(f".{self.run_dir.name}.work-*") if clean else ():
            if other != self.root and other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
        self.resumed = self.root.is_dir()

    def store(self, name: str, spec: StoreSpec) -> GradientStore:
        """The store of ``name`` for ``spec``; one left by a different spec is discarded (logged)."""
        path = self.root / "stores" / name
        try:
            return GradientStore(path, spec)
        except CacheError:
            self.log(f"[{name}] the stored gradients were made differently (another model or settings); "
                     "recomputing them")
            shutil.rmtree(path, ignore_errors=True)
            return GradientStore(path, spec)

    def has_progress(self) -> bool:
        """Whether any store chunk was completed here (worth keeping for a resume)."""
        return self.root.is_dir() and any(self.root.glob("stores/*/chunk_*.done.json"))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
