"""Everything evaluation needs from a finished run: its config, data, trained model and scores.

The run is rebuilt from its own cache: ``RunConfig.from_dict(manifest["config"])`` gives the recipe,
``load_dataset`` the same data (checked against the recorded dataset fingerprint), and the last
checkpoint the trained parameters.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cache_format.atomic import atomic_write, recover_swap
from cache_format.names import is_safe_name
from cache_format.runs import CacheProblem, RunCache
from cache_format.validate import open_checked
from precompute.config import RunConfig
from precompute.data import SplitDataset, load_dataset
from precompute.data.source import materialize
from precompute.errors import CacheError, ConfigError, ModelError
from precompute.models import build_model
from precompute.training import Checkpoint

#: set (to 1) by ``evaluate --trust-code`` / :func:`trusting_code`: evaluate may run the code a run's
#: manifest names (an environment variable, so that spawned retraining workers inherit it)
TRUST_CODE_ENV = "INFLUENCE_EXPLORER_TRUST_CODE"


@contextmanager
def trusting_code(trust: bool = True) -> Iterator[None]:
    """Within the block, evaluate may import the ``model.factory`` / ``data.factory`` files a run's
    manifest names (after checking each file's sha256 recorded by precompute). Only for runs you built."""
    old = os.environ.get(TRUST_CODE_ENV)
    os.environ[TRUST_CODE_ENV] = "1" if trust else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(TRUST_CODE_ENV, None)
        else:
            os.environ[TRUST_CODE_ENV] = old


def check_code(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse to run code a manifest names unless trusted, and then only the very file precompute used."""
    from precompute.config import file_sha256

    where = f"{run_dir}/manifest.json"
    named = []
    if cfg.model.factory:
        named.append(("model.factory", cfg.model.factory, cfg.model.factory_sha256))
    if cfg.data.source == "factory" or cfg.data.factory:
        named.append(("data.factory", cfg.data.factory, cfg.data.factory_sha256))
    for key, spec, recorded in named:
        if os.environ.get(TRUST_CODE_ENV) != "1":
            raise CacheError(f"{where}: the run names {key} = {spec!r}; evaluate never runs code named by a cache: "
                             "if you built this run yourself, pass --trust-code (the file's recorded sha256 is "
                             "checked first)")
        file = str(spec).rsplit(":", 1)[0] if isinstance(spec, str) else ""
        if not recorded:
            raise CacheError(f"{where}: no sha256 recorded for {key} = {spec!r}; rebuild the run with influence-explorer "
                             "precompute --overwrite so that its code can be checked")
        try:
            actual = file_sha256(file)
        except OSError:
            raise CacheError(f"{file}: {key} named by {where} cannot be read; rebuild the run") from None
        if actual != recorded:
            raise CacheError(f"{file}: {key} changed since the run was built (sha256 {recorded[:12]}... recorded, "
                             f"{actual[:12]}... now); rebuild the run with influence-explorer precompute --overwrite")


def checkpoint_files(run_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    """The run's checkpoint files from ``manifest.model.checkpoints``: relative paths inside the run
    only (no absolute paths, ``..`` or symlinks out), each checked against its recorded sha256."""
    from precompute.config import file_sha256

    where = f"{run_dir}/manifest.json"
    ckpts = (manifest.get("model") or {}).get("checkpoints") if isinstance(manifest.get("model"), dict) else None
    if not ckpts or not isinstance(ckpts, list):
        raise CacheError(f"{where}: model.checkpoints is empty; evaluation needs the trained "
                         "model: rebuild the run with influence-explorer precompute --overwrite")
    root = run_dir.resolve()
    out = []
    for c in ckpts:
        rel = c.get("path") if isinstance(c, dict) else None
        ok = isinstance(rel, str) and rel and not Path(rel).is_absolute() and ".." not in Path(rel).parts
        path = run_dir / rel if ok else None
        if not ok or not path.resolve().is_relative_to(root):
            raise CacheError(f"{where}: checkpoint path {rel!r} is not inside the run; a cache's paths must stay in "
                             "its folder: rebuild the run with influence-explorer precompute --overwrite")
        if not path.is_file():
            raise CacheError(f"{path} is missing; rebuild the run with influence-explorer precompute --overwrite")
        recorded = c.get("sha256")
        if recorded is not None and file_sha256(path) != recorded:
            raise CacheError(f"{path}: does not match the sha256 recorded in {where} (changed or damaged); rebuild "
                             "the run with influence-explorer precompute --overwrite")
        out.append(path)
    return out


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint of the run (weights only: never pickled code); one-line error if unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file makes the unpickler raise anything
        raise CacheError(f"{path}: not a readable checkpoint ({type(exc).__name__}); rebuild the run with "
                         "influence-explorer precompute --overwrite") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CacheError(f"{path}: not a state_dict of tensors; rebuild the run with influence-explorer precompute "
                         "--overwrite")
    return state


def resolve_run_dir(run: str | Path, cache_dir: str | Path | None = None) -> Path:
    """``run`` is a run folder (holding manifest.json) or a run name under ``cache_dir``."""
    p = Path(run)
    recover_swap(p)  # a precompute killed while replacing this run: finish its swap first
    if cache_dir is not None and is_safe_name(str(run)):
        recover_swap(Path(cache_dir) / str(run))
    if (p / "manifest.json").is_file():
        return p
    if cache_dir is not None and (Path(cache_dir) / str(run) / "manifest.json").is_file():
        return Path(cache_dir) / str(run)
    where = f"{p}" if cache_dir is None else f"{p} or {Path(cache_dir) / str(run)}"
    raise CacheError(f"{where}: no complete run there (no manifest.json); build it first with "
                     f"influence-explorer precompute, or pass --cache-dir with the folder holding it")


@dataclass
class RunContext:
    """A loaded run. Tensors live on the CPU in the model's dtype (``x_*``) / int64 (``y_*``)."""

    run_dir: Path
    manifest: dict[str, Any]
    cfg: RunConfig
    ds: SplitDataset
    final_state: dict[str, torch.Tensor]
    _scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, run_dir: str | Path) -> RunContext:
        run_dir = Path(run_dir)
        try:  # every file checked against the manifest first (damaged or hostile caches: one line)
            cache = open_checked(run_dir)
        except CacheProblem as exc:
            raise CacheError(exc.message) from None
        manifest = cache.manifest
        try:
            cfg = RunConfig.from_dict(manifest["config"], source=f"{run_dir}/manifest.json config")
        except (KeyError, TypeError, AttributeError) as exc:
            raise CacheError(f"{run_dir}/manifest.json: no usable 'config' ({exc}); rebuild the run with "
                             "influence-explorer precompute --overwrite") from None
        except ConfigError as exc:
            raise CacheError(f"{exc}; rebuild the run with influence-explorer precompute --overwrite") from None
        check_code(run_dir, cfg)
        files = checkpoint_files(run_dir, manifest)  # before anything is loaded
        ds = load_dataset(cfg.data)
        recorded = manifest.get("dataset", {}).get("fingerprint")
        if recorded and ds.fingerprint() != recorded:
            raise CacheError(f"{run_dir}/manifest.json: dataset fingerprint {recorded} does not match the data "
                             f"loaded now ({ds.fingerprint()}); the data changed since precompute: rebuild the run "
                             "with influence-explorer precompute --overwrite")
        state = _load_state(files[-1])
        return cls(run_dir=run_dir, manifest=manifest, cfg=cfg, ds=ds, final_state=state)

    # ------------------------------------------------------------------ facts
    @property
    def convex(self) -> bool:
        """Whether retraining has a unique optimum (softmax regression with L2)."""
        return self.cfg.model.arch == "logreg" and not getattr(self.cfg.model, "factory", None)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.cfg.model.dtype == "float64" else torch.float32

    @property
    def recipe(self) -> dict[str, Any]:
        """The training recipe as recorded in the manifest (stable across code versions that add
        config fields with defaults): part of every ground-truth key."""
        c = self.manifest.get("config", {})
        return {"train": c.get("train"), "model": c.get("model")}

    @property
    def model_fingerprint(self) -> str:
        return str(self.manifest["model"]["fingerprint"])

    @property
    def dataset_fingerprint(self) -> str:
        return str(self.manifest["dataset"]["fingerprint"])

    @property
    def n_train(self) -> int:
        return self.ds.n_train

    @property
    def n_test(self) -> int:
        return self.ds.n_test

    @cached_property
    def x_train(self) -> torch.Tensor:
        return materialize(self.ds.x_train, self.dtype)  # retraining needs it whole (streamed data too)

    @cached_property
    def y_train(self) -> torch.Tensor:
        return torch.as_tensor(self.ds.y_train)

    @cached_property
    def x_test(self) -> torch.Tensor:
        return materialize(self.ds.x_test, self.dtype)

    @cached_property
    def y_test(self) -> torch.Tensor:
        return torch.as_tensor(self.ds.y_test)

    @cached_property
    def test_pred(self) -> np.ndarray:
        """The trained model's test predictions ``[n_test]``."""
        with torch.no_grad():
            return self.model().forward(self.x_test).argmax(1).numpy()

    def model(self, dtype: torch.dtype | None = None) -> nn.Module:
        """A fresh copy of the trained model (final checkpoint), in eval mode."""
        m = build_model(self.cfg.model, self.ds.input_shape, self.ds.n_classes)
        try:
            m.load_state_dict(self.final_state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelError(f"{self.run_dir}: the model rebuilt from the run's config does not match its checkpoint "
                             f"({first}); evaluate needs a run whose model the config can rebuild (built-in arch "
                             "or model.factory), not one passed in memory") from None
        if dtype is not None:
            m = m.to(dtype)
        return m.eval()

    def checkpoints(self) -> list[Checkpoint]:
        out = []
        files = checkpoint_files(self.run_dir, self.manifest)
        for c, path in zip(self.manifest["model"]["checkpoints"], files, strict=True):
            out.append(Checkpoint(epoch=int(c["epoch"]), lr=float(c["lr"]), state_dict=_load_state(path)))
        return out

    # ------------------------------------------------------------------ scores
    @property
    def run_methods(self) -> list[str]:
        return list(self.manifest.get("methods", {}))

    def method_options(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.cfg.influence.options.get(name) or {})

    def scores(self, name: str) -> np.ndarray:
        """``[n_test, n_train]`` float32 scores of ``name``: from the cache when the run has it, else
        computed on the run's model with the run's settings for that method (kept in memory)."""
        if name not in self._scores:
            if name in self.run_methods:
                self._scores[name] = np.asarray(RunCache(self.run_dir).scores(name), dtype=np.float32)
            else:
                self._scores[name] = self._computed_scores(name)
        return self._scores[name]

    def _computed_scores(self, name: str) -> np.ndarray:
        """Scores of a method the run lacks, kept in ``<run>/evaluation/scores/`` (keyed by method,
        options, damping, parameter selection and model fingerprint) so later calls do not refit it."""
        import hashlib
        import json

        opts = self.method_options(name)
        blob = json.dumps({"method": name, "options": opts, "damping": self.cfg.influence.damping,
                           "params": self.cfg.influence.params, "model": self.model_fingerprint}, sort_keys=True,
                          default=str)
        path = self.run_dir / "evaluation" / "scores" / f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.npy"
        if path.is_file():
            try:
                arr = np.load(path)
                if arr.shape == (self.n_test, self.n_train):
                    return arr
            except (OSError, ValueError):
                pass
        t0 = time.perf_counter()
        arr = self.compute_scores(name, opts)
        self.computed_seconds[name] = round(time.perf_counter() - t0, 3)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda fh: np.save(fh, arr))
        except OSError:
            pass  # caching is an optimisation; the store reports unwritable folders itself
        return arr

    @cached_property
    def computed_seconds(self) -> dict[str, float]:
        return {}

    def method_seconds(self, name: str) -> float | None:
        info = self.manifest.get("methods", {}).get(name)
        if info and "seconds" in info:
            return float(info["seconds"])
        return self.computed_seconds.get(name)

    def compute_scores(self, name: str, options: dict[str, Any] | None = None,
                       test_index: np.ndarray | None = None) -> np.ndarray:
        """Fit estimator ``name`` (with ``options``, e.g. ``{"damping": 1e-3}``) on the run's model and
        score test rows ``test_index`` (all by default): ``[len(test_index), n_train]`` float32."""
        from precompute.influence import InfluenceTask, available_methods, get_estimator
        from precompute.influence.runner import compute_scores
        from precompute.params import ParamSpace, select_parameters

        if name not in available_methods():
            raise ConfigError(f"evaluate --methods: unknown method {name!r}; known: {available_methods()}")
        est = get_estimator(name, options)
        model = self.model()
        space = ParamSpace(model, select_parameters(model, self.cfg.influence.params))
        task = InfluenceTask(model=model, space=space, x_train=self.x_train, y_train=self.y_train,
                             weight_decay=self.cfg.train.weight_decay, damping=self.cfg.influence.damping,
                             checkpoints=self.checkpoints(), batch_size=self.cfg.influence.train_batch_size)
        idx = np.arange(self.n_test) if test_index is None else np.asarray(test_index)
        xt, yt = self.x_test[idx], self.y_test[idx]
        return compute_scores(est, task, xt, yt, self.cfg.influence.train_batch_size,
                              self.cfg.influence.test_batch_size)
