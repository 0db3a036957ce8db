"""The precompute pipeline: data -> training -> predictions/features -> influence -> embedding -> cache."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cache_format import names as fmt
from precompute.cache import CacheWriter
from precompute.cache.writer import check_same_data, existing_run_status
from precompute.config import RunConfig, file_sha256
from precompute.data import SplitDataset, load_dataset
from precompute.data.display import write_display
from precompute.data.source import as_model_input
from precompute.distributed.context import DistContext, init_from_env
from precompute.embedding_worker import BackgroundEmbedding
from precompute.errors import CacheError, ConfigError
from precompute.influence import InfluenceTask, get_estimator
from precompute.influence.registry import check_influence_config
from precompute.models import build_model, count_parameters, predict_with_features
from precompute.params import ParamSpace, select_parameters
from precompute.store.budget import peak_rss_mb, reset_peak_rss, resolve_budget
from precompute.store.compression_choice import build_compressor
from precompute.store.feasibility import check_run_fits
from precompute.store.stage import model_fingerprint, run_method
from precompute.store.workdir import WorkDir
from precompute.training import Checkpoint, TrainResult, train_model
from precompute.user_model import check_output_size, load_user_model


@dataclass
class PrecomputeResult:
    """Where the cache is and what each stage cost."""

    path: Path
    skipped: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    manifest: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU; ``cuda`` without a GPU is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)



class _Stages:
    """Times each stage, records its peak RSS and logs ``[name] ... (stage i of n; t s so far)``."""

    def __init__(self, log: Callable[[str], None], total: int = 0):
        self.timings: dict[str, float] = {}
        self.peak_rss: dict[str, float] = {}
        self.log, self.total, self.started = log, total, time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        reset_peak_rss()
        where = f"stage {len(self.timings) + 1} of {max(self.total, len(self.timings) + 1)}; " if self.total else ""
        self.log(f"[{name}] ... ({where}{t0 - self.started:.1f} s so far)")
        yield
        self.timings[name] = round(time.perf_counter() - t0, 3)
        self.peak_rss[name] = round(peak_rss_mb(), 1)
        self.log(f"[{name}] done in {self.timings[name]:.1f}s (peak RSS {self.peak_rss[name]:.0f} MB)")


def run_precompute(cfg: RunConfig, cache_dir: str | Path = "cache", run_dir: str | Path | None = None,
                   overwrite: bool = False, progress: bool = True,
                   log: Callable[[str], None] = print, dataset: SplitDataset | None = None,
                   model: torch.nn.Module | None = None,
                   checkpoints: list[Checkpoint] | None = None,
                   background_embedding: bool | BackgroundEmbedding = False) -> PrecomputeResult:
    """Build the cache for ``cfg``; returns immediately if an identical complete run exists.

    ``dataset`` / ``model`` (+ ``checkpoints``) hand over in-memory data and an already trained
    model (the Python API); otherwise the data comes from ``cfg.data`` and the model is trained
    from ``cfg.model``/``cfg.train`` or loaded from the user's ``model.factory`` + ``checkpoint``.
    ``background_embedding``: compute the 2-D map in a helper process started now, or in the one
    given (the CLI starts it before its own imports): umap's import overlaps training and its layout
    the influence stages; the same map, bit for bit. The process is closed when this returns.
    """
    cfg.validate()
    check_influence_config(cfg.influence)
    dist = init_from_env(cfg.device)  # a torchrun launch: join its process group (else one process)
    log_all, log = log, (log if dist.is_main else _quiet)
    run_dir = Path(run_dir) if run_dir else Path(cache_dir) / cfg.name
    identity = cfg.identity()
    if _up_to_date(run_dir, identity, overwrite, dataset, cfg, dist):
        log(f"{run_dir} is up to date (same config and data); nothing to do. Pass --overwrite to rebuild.")
        if isinstance(background_embedding, BackgroundEmbedding):
            background_embedding.close()
        return PrecomputeResult(path=run_dir, skipped=True)
    estimators = {m: get_estimator(m, cfg.influence.options.get(m)) for m in cfg.influence.methods}
    device = resolve_device(cfg.device)
    budget = dist.broadcast(resolve_budget(cfg.memory_budget))  # every rank decides as rank 0 does
    n_model = 0 if model is not None else 1  # load model / train
    stages = _Stages(log, 5 + n_model + len(estimators) + int(cfg.mislabels.enabled))
    t_start = time.perf_counter()
    work = WorkDir(run_dir, identity, log, clean=dist.is_main)
    dist.barrier()  # rank 0 removed stale work folders before any rank writes
    background = background_embedding if isinstance(background_embedding, BackgroundEmbedding) else (
        BackgroundEmbedding(log) if background_embedding else None)
    if background is not None:
        background.log = log
        if not dist.is_main:  # rank 0 draws the map
            background.close()
            background = None
    try:
        with CacheWriter(run_dir) if dist.is_main else nullcontext() as writer:
            with stages.stage("data"):
                ds = dataset if dataset is not None else load_dataset(cfg.data)
            dtype = torch.float64 if cfg.model.dtype == "float64" else torch.float32
            # in-memory arrays become tensors; streamed data a SampleArray read by rows (x[s:e], x[idx])
            x_tr = as_model_input(ds.x_train, dtype, device)
            y_tr = torch.as_tensor(ds.y_train, device=device)
            x_te = as_model_input(ds.x_test, dtype, device)
            y_te = torch.as_tensor(ds.y_test, device=device)

            if model is not None:
                model = model.to(device=device, dtype=dtype).eval()
                check_output_size(model, x_te, ds.n_classes, "the model")
                check_run_fits(cfg, estimators, model, len(y_tr), budget, run_dir)
                ckpts = checkpoints or [Checkpoint(epoch=1, lr=1.0, state_dict=_state(model))]
                trained = TrainResult(checkpoints=ckpts)
            elif cfg.model.factory:
                with stages.stage("load model"):
                    model, states = load_user_model(cfg.model.factory, cfg.model.checkpoints, x_te[:1].cpu(), ds.n_classes)
                    model = model.to(device=device, dtype=dtype).eval()
                    check_run_fits(cfg, estimators, model, len(y_tr), budget, run_dir)
                    lrs = cfg.model.checkpoint_lrs or [1.0] * len(states)
                    trained = TrainResult(checkpoints=[Checkpoint(epoch=i + 1, lr=lr, state_dict=st)
                                                       for i, (st, lr) in enumerate(zip(states, lrs, strict=True))])
            else:
                model = build_model(cfg.model, ds.input_shape, ds.n_classes).to(device)
                check_run_fits(cfg, estimators, model, len(y_tr), budget, run_dir)  # before training
                with stages.stage("train"):
                    ddp = dist.active and cfg.train.distributed == "ddp"
                    bar = tqdm(total=cfg.train.epochs, desc="train", unit="epoch", disable=not progress or not
                               dist.is_main, leave=False)
                    trained = None
                    if dist.is_main or ddp:  # rank0: the other ranks wait for its weights
                        trained = train_model(model, x_tr, y_tr, cfg.train, x_te, y_te, on_epoch=lambda row: (
                            bar.update(1), bar.set_postfix(loss=f"{row['train_loss']:.3f}")),
                            record_trajectory="data_value_embedding" in cfg.influence.methods,
                            dist=dist if ddp else None)
                    bar.close()
                    if ddp:  # DistributedDataParallel keeps the replicas in step: check it
                        prints = dist.gather(model_fingerprint(model))
                        if len(set(prints)) > 1:
                            raise RuntimeError(f"DDP training left the ranks with different weights ({prints})")
                        log(f"[train] DDP over {dist.world} ranks: weights identical on every rank")
                    if dist.active:  # bit-identical weights on every rank
                        trained, state = dist.broadcast((trained, _state(model)) if dist.is_main else None)
                        model.load_state_dict(state)
                    model.eval()
            outputs: dict[str, Any] = {}
            if writer is not None:
                for i, ck in enumerate(trained.checkpoints):
                    torch.save(ck.state_dict, writer.path(f"checkpoints/checkpoint_{i:02d}.pt"))
                with stages.stage("predictions"):
                    outputs = _predictions(model, x_tr, y_tr, x_te, y_te)
                    for name, arr in outputs["arrays"].items():
                        writer.save_array(name, arr)
                if background is not None:
                    background.submit(outputs["features"], work.root / "embedding", cfg.embedding.n_neighbors,
                                      cfg.embedding.min_dist, cfg.embedding.seed)

            space = ParamSpace(model, select_parameters(model, cfg.influence.params))
            compressor = build_compressor(cfg, model, space, x_tr, list(estimators.values()), budget, log)
            task = InfluenceTask(model=model, space=space, x_train=x_tr, y_train=y_tr,
                                 weight_decay=cfg.train.weight_decay, damping=cfg.influence.damping,
                                 checkpoints=trained.checkpoints, batch_size=cfg.influence.train_batch_size,
                                 compressor=compressor, trajectory=trained.trajectory, dist=dist)
            fingerprints = (model_fingerprint(model), ds.fingerprint())
            method_info: dict[str, Any] = {}
            for name, est in estimators.items():
                with stages.stage(f"influence:{name}"):
                    method_info[name] = run_method(
                        name, est, task, x_te, y_te, writer, work, topk=cfg.influence.topk,
                        train_batch=cfg.influence.train_batch_size, test_batch=cfg.influence.test_batch_size,
                        budget=budget, store_scores=cfg.influence.store_scores, store_dtype=cfg.influence.store_dtype,
                        chunk_rows=cfg.chunk_rows, fingerprints=fingerprints, progress=progress, log=log)
            for name in estimators:
                method_info[name]["seconds"] = stages.timings[f"influence:{name}"]
            if writer is None:  # another rank of a torchrun launch: its shares are merged; rank 0 finishes
                log_all(f"{dist.tag()}done: store chunks and score blocks handed to rank 0")
                return PrecomputeResult(path=run_dir, timings=stages.timings, peak_rss_mb=max(
                    stages.peak_rss.values(), default=peak_rss_mb()), manifest={"methods": method_info})

            mislabel_info = None
            if cfg.mislabels.enabled:
                with stages.stage("mislabels"):
                    from precompute.mislabels import run_mislabel_stage

                    self_inf = {m: np.load(writer.path(f"{fmt.METHODS_DIR}/{m}/{fmt.SELF_INFLUENCE}.npy"))
                                for m in estimators}
                    mislabel_info = run_mislabel_stage(cfg, ds, model, outputs, self_inf, writer, device, log,
                                                       checkpoints=trained.checkpoints, work_root=work.root,
                                                       budget=budget)

            embedding_info: dict[str, Any] = {"mode": "in-process"}
            with stages.stage("embedding"):
                if background is not None:  # started with the run: only what is left of it is waited for
                    emb, embedding_info = background.result()
                else:
                    emb = _umap(outputs["features"], cfg)
                writer.save_array(fmt.EMBEDDING, emb)

            with stages.stage("tour"):  # a presenter's striking examples, from the arrays written so far
                from precompute.tour import write_tour

                write_tour(writer, ds, outputs, list(estimators), mislabel_info, log)

            with stages.stage("write"):
                # thumbnails of streamed data are rendered chunk by chunk into memmaps (write_display)
                texts = {"train": write_display(writer, fmt.TRAIN_IMAGES, ds.images_train),
                         "test": write_display(writer, fmt.TEST_IMAGES, ds.images_test)}
                writer.save_parquet(fmt.SAMPLES, _samples_frame(ds, outputs, texts))
            stages.timings["total"] = round(time.perf_counter() - t_start, 3)
            manifest = _manifest(cfg, ds, model, space, trained, outputs, method_info, stages.timings, device,
                                 [file_sha256(writer.path(f"checkpoints/checkpoint_{i:02d}.pt"))
                                  for i in range(len(trained.checkpoints))])
            manifest["dataset"]["labels_override"] = ds.extra.get("labels_override")
            manifest["dataset"]["excluded"] = ds.extra.get("excluded")  # {path, rows} with data.exclude
            if "label_noise" in ds.extra:
                manifest["dataset"]["noise"] = ds.extra["label_noise"]  # kind, pairs/matrix used, n_flipped
            if mislabel_info is not None:
                manifest["mislabels"] = mislabel_info
            manifest["memory_budget_bytes"] = budget
            if dist.active:
                manifest["distributed"] = {**dist.summary(), "training": cfg.train.distributed}
            manifest["peak_rss_mb"] = stages.peak_rss
            manifest["embedding"] = embedding_info
            path = writer.finalize(manifest)
    except BaseException:
        if background is not None:
            background.close()
        if work.has_progress():
            log(f"kept the completed gradient-store chunks in {work.root}; rerun the same command to resume")
        elif dist.is_main:
            work.remove()
        raise
    if background is not None:
        background.close()
    work.remove()
    return PrecomputeResult(path=path, timings=stages.timings, peak_rss_mb=max(stages.peak_rss.values(), default=peak_rss_mb()),
                            manifest=manifest)


def _quiet(_msg: str) -> None:
    """The log of ranks other than 0 (they report through rank 0)."""


def _up_to_date(run_dir: Path, identity: dict[str, Any], overwrite: bool, dataset: SplitDataset | None,
                cfg: RunConfig, dist: DistContext) -> bool:
    """Whether an identical run already exists (then there is nothing to do). Rank 0 checks (it may finish
    a killed swap or remove dead partial folders) and tells the others; its error is every rank's."""
    verdict: tuple[bool, str | None] = (False, None)
    if dist.is_main:
        try:
            same = existing_run_status(run_dir, identity, overwrite=overwrite) == "same"
            if same:  # same config: the same data too? (a user's checkpoint is in the config: its sha256)
                check_same_data(run_dir, (dataset if dataset is not None else load_dataset(cfg.data)).fingerprint())
            verdict = (same, None)
        except CacheError as exc:
            if not dist.active:
                raise
            verdict = (False, str(exc))
    same, error = dist.broadcast(verdict)
    if error is not None:
        raise CacheError(error)
    return same


@torch.no_grad()
def _predictions(model, x_tr, y_tr, x_te, y_te, batch_size: int = 1024) -> dict[str, Any]:
    """Logits and penultimate features of both splits in one pass over each (``x`` tensor or lazy rows)."""
    out: dict[str, Any] = {"arrays": {}}
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        logits, feats = predict_with_features(model, x, batch_size)
        probs = torch.softmax(logits, 1)
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        out[split] = {"pred": probs.argmax(1).cpu().numpy(), "confidence": probs.max(1).values.cpu().numpy(),
                      "loss": loss.cpu().numpy(), "probs": probs.cpu().numpy()}
        out["arrays"][f"{split}_probs"] = probs.to(torch.float32).cpu().numpy()
        out["arrays"][f"{split}_features"] = feats.to(torch.float32).cpu().numpy()
    out["features"] = np.concatenate([out["arrays"]["train_features"], out["arrays"]["test_features"]])
    return out


def _umap(features: np.ndarray, cfg: RunConfig) -> np.ndarray:
    """2-D UMAP of standardised features ``[n_train + n_test, d] -> [n_train + n_test, 2]`` (exact kNN
    graph, compiled code cached on disk: see precompute.embedding)."""
    from precompute.embedding import umap_embedding  # imported late: umap is a slow import

    return umap_embedding(features, cfg.embedding.n_neighbors, cfg.embedding.min_dist, cfg.embedding.seed)


def _samples_frame(ds: SplitDataset, outputs: dict[str, Any],
                   texts: dict[str, list[str] | None] | None = None) -> pd.DataFrame:
    """One row per sample (train rows first); a ``text`` column where the samples are shown as text."""
    frames = []
    for split, y, n in (("train", ds.y_train, ds.n_train), ("test", ds.y_test, ds.n_test)):
        o = outputs[split]
        frames.append(pd.DataFrame({
            "split": split,
            "index": np.arange(n, dtype=np.int64),
            "label": y.astype(np.int64),
            "original_label": (ds.y_train_original if split == "train" else ds.y_test).astype(np.int64),
            "flipped": ds.flipped if split == "train" else np.zeros(n, bool),
            "pred": o["pred"].astype(np.int64),
            "confidence": o["confidence"].astype(np.float32),
            "loss": o["loss"].astype(np.float32),
            "correct": o["pred"] == y,
            "source_index": (ds.train_source_index if split == "train" else ds.test_source_index).astype(np.int64),
        }))
        if f"{split}_paths" in ds.extra:
            frames[-1]["path"] = ds.extra[f"{split}_paths"]
        if texts and texts.get(split) is not None:
            frames[-1]["text"] = texts[split]
    return pd.concat(frames, ignore_index=True)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _manifest(cfg, ds, model, space, trained: TrainResult, outputs, method_info, timings, device,
              ckpt_sha256: list[str]) -> dict[str, Any]:
    import numpy
    import sklearn

    # loss/accuracy from the predictions already computed (no second pass over the data)
    test_loss, test_acc = float(outputs["test"]["loss"].mean()), float((outputs["test"]["pred"] == ds.y_test).mean())
    train_loss = float(outputs["train"]["loss"].mean())
    train_acc = float((outputs["train"]["pred"] == ds.y_train).mean())
    return {
        "name": cfg.name,
        "config": cfg.identity(),
        "dataset": {
            "name": ds.name, "fingerprint": ds.fingerprint(), "n_train": ds.n_train, "n_test": ds.n_test,
            "n_classes": ds.n_classes, "class_names": ds.class_names, "input_shape": list(ds.input_shape),
            "image_shape": list(ds.images_train.shape[1:]), "label_noise": cfg.data.label_noise,
            "n_flipped": int(ds.flipped.sum()), "source": cfg.data.source,
            "source_path": ds.extra.get("source_path"),
            "skipped_corrupt": len(ds.extra.get("skipped_corrupt", [])),
            "skipped_corrupt_files": ds.extra.get("skipped_corrupt", [])[:20],
            "streamed": ds.streamed, "workers": cfg.data.workers,
            "display": getattr(ds.images_train, "kind", "image"),
        },
        "model": {
            "arch": _model_label(cfg, model), "n_params": count_parameters(model), "n_influence_params": space.size,
            "influence_params": space.names, "fingerprint": model_fingerprint(model),
            "train_accuracy": train_acc, "test_accuracy": test_acc, "train_loss": train_loss, "test_loss": test_loss,
            "history": trained.history,
            "checkpoints": [{"path": f"checkpoints/checkpoint_{i:02d}.pt", "epoch": c.epoch, "lr": c.lr,
                             "sha256": ckpt_sha256[i]} for i, c in enumerate(trained.checkpoints)],
        },
        "methods": method_info,
        "timings": timings,
        "device": str(device),
        "packages": {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
                     "pandas": pd.__version__, "scikit-learn": sklearn.__version__},
    }


def _model_label(cfg: RunConfig, model: torch.nn.Module) -> str:
    if cfg.model.factory:
        return cfg.model.factory.rsplit("/", 1)[-1]
    return cfg.model.arch if cfg.data.source != "python" else type(model).__name__
