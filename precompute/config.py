"""Validated run configuration: dataclasses with ``to_dict()``, loaded from TOML and/or CLI flags.

A run config fully determines a cache: the cache records it, and precompute refuses to reuse a
run directory made with a different one (unless ``--overwrite``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from cache_format.names import is_safe_name
from precompute.config_paths import file_sha256, resolve_relative_paths
from precompute.config_types import check_types
from precompute.errors import ConfigError

ARCHITECTURES = ("logreg", "mlp", "cnn")
DATA_SOURCES = ("digits", "image_folder", "table", "npz", "factory", "python")  # python = in-memory (the Python API)
OPTIMIZERS = ("adam", "sgd", "lbfgs")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float64")
STORE_SCORES = ("auto", "dense", "topk")  # auto: the dense [n_test, n_train] matrix only under a size budget
STORE_DTYPES = ("auto", "float16", "float32", "float64")  # auto: the dtype of the method's factors
NOISE_KINDS = ("symmetric", "pairs", "class_conditional")  # data.noise_kind
#: label-noise keys left out of a run's identity while at these defaults (runs made before they existed match)
NOISE_DEFAULTS = {"noise_kind": "symmetric", "noise_pairs": None, "noise_n_pairs": 4, "noise_matrix": None,
                  "noise_matrix_sha256": None}


#: largest image side and pixel count a model input may have (data.image_size, or the images' own size)
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = 4096 * 4096


def _check(cond: bool, key: str, msg: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg} (got {value!r}); fix it in the config file or the matching flag")


def check_damping(value: Any, key: str = "influence.damping") -> None:
    """Raise ConfigError unless ``value`` is a finite number >= 0 or ``"auto"`` (the one damping check)."""
    ok = value == "auto" or (isinstance(value, int | float) and not isinstance(value, bool)
                             and math.isfinite(value) and value >= 0)
    _check(ok, key, "must be a finite number >= 0 or \"auto\"", value)


@dataclass
class DataConfig:
    """Where the data comes from and how it is split.

    ``source``: ``"digits"`` (scikit-learn's bundled handwritten digits, 1,797 8x8 images),
    ``"image_folder"`` (``path/<split>/<class>/*.png`` or ``path/<class>/*`` split by
    ``test_fraction``; converted to ``image_mode`` and ``image_size`` [height, width], at most 4096 a
    side; files over 50 M pixels are treated as corrupt; symlinks out of ``path`` are refused; corrupt files
    skipped with a count or fatal per ``on_corrupt``), ``"table"`` (CSV/parquet at ``path`` with
    ``label_column`` and numeric ``feature_columns``, default all others; a ``split`` column is used
    if present), ``"npz"`` (an ``.npz`` or a folder of ``.npy`` files ``X_train, y_train, X_test,
    y_test``, optional ``class_names``; memory-mapped) or ``"factory"`` (``factory =
    "path/to/file.py:make_datasets"`` returning ``(train, test)`` ``torch.utils.data.Dataset`` s of
    ``(x, y)``; see :mod:`precompute.data.factory`). Image folders and factories are read lazily,
    a batch at a time, through a ``DataLoader`` with ``workers`` processes (0: in the main process).
    ``class_names`` fixes the class order (and the allowed labels).
    ``label_noise`` flips that fraction of *training* labels (seeded by ``noise_seed``); the flipped
    set is recorded as ground truth for mislabel detection. ``noise_kind``: ``symmetric`` (to a
    random other class), ``pairs`` (that share of each class of ``noise_pairs`` [[a, b], ...] flips to
    its partner; without pairs, the ``noise_n_pairs`` most confused pairs of a nearest-centroid
    classifier on the clean training split) or ``class_conditional`` (that share of each class flips
    to the other classes in proportion to the rows of ``noise_matrix`` [C, C], a list of rows or a
    ``.npy`` path; without one, the nearest-centroid confusion matrix). See docs/mislabels.md.
    ``exclude`` is a CSV with an ``index`` column (the review page's excluded samples): those training
    samples are dropped after noise and ``labels_override`` (both in the reviewed run's indices); the
    rest keep their ``source_index``.
    ``labels_override`` is a CSV ``index,label`` (e.g. the review page's cleaned labels) applied to
    the training labels after any noise; ``labels_override_sha256`` is filled in by ``validate()``
    so that a changed file changes the run's identity (and triggers a rebuild).
    """

    source: str = "digits"
    test_fraction: float = 0.2
    split_seed: int = 0
    label_noise: float = 0.0
    noise_seed: int = 0
    noise_kind: str = "symmetric"
    noise_pairs: list[list[int]] | None = None
    noise_n_pairs: int = 4
    noise_matrix: list[list[float]] | str | None = None
    noise_matrix_sha256: str | None = None
    labels_override: str | None = None
    labels_override_sha256: str | None = None
    exclude: str | None = None
    exclude_sha256: str | None = None
    path: str | None = None
    image_mode: str | None = None
    image_size: list[int] | None = None
    on_corrupt: str = "error"
    label_column: str = "label"
    feature_columns: list[str] | None = None
    class_names: list[str] | None = None
    factory: str | None = None
    factory_sha256: str | None = None  # of the datasets file (filled in by validate(); evaluate checks it)
    workers: int = 0

    def validate(self) -> None:
        _check(self.source in DATA_SOURCES, "data.source", f"must be one of {list(DATA_SOURCES)}", self.source)
        _check(isinstance(self.workers, int) and not isinstance(self.workers, bool) and self.workers >= 0,
               "data.workers", "must be an integer >= 0 (DataLoader worker processes; 0 reads in the main process)",
               self.workers)
        if self.source == "factory":
            _check(isinstance(self.factory, str) and ":" in self.factory, "data.factory",
                   "must look like 'path/to/file.py:make_datasets' with data.source = \"factory\"", self.factory)
            file, func = self.factory.rsplit(":", 1)
            _check(Path(file).is_file(), "data.factory", "file not found; point it at your datasets file", self.factory)
            self.factory = f"{Path(file).resolve()}:{func}"
            self.factory_sha256 = file_sha256(file)
        elif self.source not in ("digits", "python"):
            _check(bool(self.path), "data.path", f"is required for source {self.source!r}", self.path)
            _check(Path(str(self.path)).exists(), "data.path", "does not exist; point it at your data", self.path)
            self.path = str(Path(str(self.path)).resolve())
        _check(self.image_mode in (None, "L", "RGB"), "data.image_mode", "must be \"L\" or \"RGB\"", self.image_mode)
        _check(self.image_size is None or (isinstance(self.image_size, list) and len(self.image_size) == 2
                                           and all(isinstance(v, int) and v > 0 for v in self.image_size)),
               "data.image_size", "must be [height, width] in pixels", self.image_size)
        _check(self.image_size is None or (max(self.image_size) <= MAX_IMAGE_SIDE
                                           and self.image_size[0] * self.image_size[1] <= MAX_IMAGE_PIXELS),
               "data.image_size", f"must be at most {MAX_IMAGE_SIDE} pixels a side (each image becomes a model "
               "input of that size; resize to what the model needs)", self.image_size)
        _check(self.on_corrupt in ("error", "skip"), "data.on_corrupt", "must be \"error\" or \"skip\"", self.on_corrupt)
        _check(0.0 < self.test_fraction < 1.0, "data.test_fraction", "must be in (0, 1)", self.test_fraction)
        _check(0.0 <= self.label_noise < 1.0, "data.label_noise", "must be in [0, 1)", self.label_noise)
        self._validate_noise()
        if self.labels_override is not None:
            import hashlib

            p = Path(self.labels_override)
            if not p.is_file():
                raise ConfigError(f"{p}: labels override file not found; pass an existing CSV (index,label) "
                                  "to --labels-override (or data.labels_override)")
            self.labels_override = str(p.resolve())
            self.labels_override_sha256 = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        else:
            self.labels_override_sha256 = None
        self.exclude_sha256 = None
        if self.exclude is not None:
            p = Path(self.exclude)
            if not p.is_file():
                raise ConfigError(f"{p}: exclude file not found; pass an existing CSV with an 'index' column (the "
                                  "review page's excluded samples) to --exclude (or data.exclude)")
            self.exclude, self.exclude_sha256 = str(p.resolve()), file_sha256(p)[:16]


    def _validate_noise(self) -> None:
        """``noise_kind`` and its pairs/matrix (class ranges are checked against the data when it is loaded)."""
        if isinstance(self.noise_kind, str):
            self.noise_kind = self.noise_kind.replace("-", "_")
        _check(self.noise_kind in NOISE_KINDS, "data.noise_kind", f"must be one of {list(NOISE_KINDS)}",
               self.noise_kind)
        _check(isinstance(self.noise_n_pairs, int) and not isinstance(self.noise_n_pairs, bool)
               and self.noise_n_pairs >= 1, "data.noise_n_pairs", "must be an integer >= 1", self.noise_n_pairs)
        if self.noise_pairs is not None:
            _check(self.noise_kind == "pairs", "data.noise_pairs", "needs data.noise_kind = \"pairs\" "
                   "(--noise-kind pairs)", self.noise_pairs)
            ok = isinstance(self.noise_pairs, list) and bool(self.noise_pairs) and all(
                isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                  and v >= 0 for v in p) and p[0] != p[1]
                for p in self.noise_pairs)
            _check(ok, "data.noise_pairs", "must be pairs of two different class indices, e.g. [[1, 7], [3, 8]] "
                   "(--noise-pairs 1:7,3:8)", self.noise_pairs)
            flat = [v for p in self.noise_pairs for v in p]
            _check(len(set(flat)) == len(flat), "data.noise_pairs", "must not share a class between pairs",
                   self.noise_pairs)
            self.noise_pairs = [[int(a), int(b)] for a, b in self.noise_pairs]
        self.noise_matrix_sha256 = None
        if self.noise_matrix is not None:
            _check(self.noise_kind == "class_conditional", "data.noise_matrix", "needs data.noise_kind = "
                   "\"class_conditional\" (--noise-kind class-conditional)", self.noise_matrix)
            if isinstance(self.noise_matrix, str):
                import hashlib

                p = Path(self.noise_matrix)
                if not p.is_file():
                    raise ConfigError(f"{p}: noise matrix file not found; pass an existing .npy file to "
                                      "--noise-matrix (or data.noise_matrix)")
                self.noise_matrix = str(p.resolve())
                self.noise_matrix_sha256 = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            else:
                ok = isinstance(self.noise_matrix, list) and bool(self.noise_matrix) and all(
                    isinstance(r, list) and len(r) == len(self.noise_matrix)
                    and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                            for v in r) for r in self.noise_matrix)
                _check(ok, "data.noise_matrix", "must be a square list of rows of numbers >= 0 (one per class) "
                       "or a .npy path", self.noise_matrix)


@dataclass
class ModelConfig:
    """A built-in architecture trained by precompute, or the user's own trained model.

    Built-in: ``arch`` = ``logreg`` (softmax regression), ``mlp`` (tanh) or ``cnn``, trained with [train].
    Your own: ``factory = "path/to/file.py:make_model"`` (returns an ``nn.Module``) and
    ``checkpoint`` = a state_dict file or a list of them (oldest first; the last is the model
    explained, all are used by TracIn/TRAK), loaded with ``torch.load(weights_only=True)``; nothing
    is trained. ``checkpoint_lrs`` are the learning rates TracIn weights them by (default 1 each).
    """

    arch: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [32])
    dtype: str = "float32"
    factory: str | None = None
    checkpoint: str | list[str] | None = None
    checkpoint_lrs: list[float] | None = None
    #: sha256 of each checkpoint file and of the factory file, filled in by ``validate()``: changed
    #: weights or model code change the run's identity (never "up to date"); evaluate checks them
    checkpoint_sha256: list[str] | None = None
    factory_sha256: str | None = None

    @property
    def checkpoints(self) -> list[str]:
        if self.checkpoint is None:
            return []
        return [self.checkpoint] if isinstance(self.checkpoint, str) else list(self.checkpoint)

    def validate(self) -> None:
        if self.factory is not None:
            _check(":" in self.factory, "model.factory", "must look like 'path/to/file.py:make_model'", self.factory)
            _check(bool(self.checkpoints), "model.checkpoint", "is required with model.factory (a state_dict file)",
                   self.checkpoint)
            for ck in self.checkpoints:
                _check(Path(ck).is_file(), "model.checkpoint", "file not found; save one with "
                       "torch.save(model.state_dict(), path)", ck)
            _check(self.checkpoint_lrs is None or len(self.checkpoint_lrs) == len(self.checkpoints),
                   "model.checkpoint_lrs", "needs one learning rate per checkpoint", self.checkpoint_lrs)
            path, func = self.factory.rsplit(":", 1)
            self.factory = f"{Path(path).resolve()}:{func}"
            self.checkpoint = [str(Path(c).resolve()) for c in self.checkpoints]
            self.checkpoint_sha256 = [file_sha256(c) for c in self.checkpoint]
            _check(Path(path).is_file(), "model.factory", "file not found; point it at your model file", self.factory)
            self.factory_sha256 = file_sha256(path)
        _check(self.arch in ARCHITECTURES, "model.arch", f"must be one of {list(ARCHITECTURES)}", self.arch)
        _check(all(isinstance(h, int) and h > 0 for h in self.hidden), "model.hidden",
               "must be a list of positive integers", self.hidden)
        _check(self.dtype in DTYPES, "model.dtype", f"must be one of {list(DTYPES)}", self.dtype)


@dataclass
class TrainConfig:
    """Deterministic training recipe.

    The objective is ``mean cross-entropy + weight_decay / 2 * ||theta||^2``; the L2 term is part of
    the loss (not the optimizer), so the Hessian used by influence methods is that of the real
    training objective. ``checkpoints`` evenly spaced snapshots are kept (at most one per epoch) (TracIn/TRAK use them).
    """

    optimizer: str = "adam"
    lr: float = 0.01
    epochs: int = 60
    batch_size: int = 64
    weight_decay: float = 1e-3
    seed: int = 0
    checkpoints: int = 5
    lr_schedule: str = "cosine"
    #: under torchrun: ``rank0`` trains once on rank 0 and hands the weights to every rank (the cache is
    #: the same for any number of processes); ``ddp`` trains with DistributedDataParallel, each rank on
    #: its share of every minibatch (faster for big built-in models; the model then depends on the
    #: number of processes through float rounding). Ignored in a single process.
    distributed: str = "rank0"

    def validate(self) -> None:
        _check(self.lr_schedule in ("constant", "cosine"), "train.lr_schedule", "must be 'constant' or 'cosine'",
               self.lr_schedule)
        _check(self.distributed in ("rank0", "ddp"), "train.distributed", "must be 'rank0' or 'ddp'",
               self.distributed)
        _check(self.distributed != "ddp" or self.optimizer != "lbfgs", "train.distributed",
               "'ddp' trains in minibatches: use optimizer 'adam' or 'sgd', or distributed = 'rank0'", self.distributed)
        _check(self.optimizer in OPTIMIZERS, "train.optimizer", f"must be one of {list(OPTIMIZERS)}", self.optimizer)
        _check(self.lr > 0, "train.lr", "must be > 0", self.lr)
        _check(isinstance(self.epochs, int) and self.epochs >= 1, "train.epochs", "must be an integer >= 1", self.epochs)
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1, "train.batch_size",
               "must be an integer >= 1", self.batch_size)
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0", self.weight_decay)
        _check(isinstance(self.checkpoints, int) and self.checkpoints >= 1, "train.checkpoints",
               "must be an integer >= 1", self.checkpoints)


@dataclass
class InfluenceConfig:
    """Which influence methods to run and how.

    ``damping`` is lambda in ``(H + lambda I)``, where H already includes the weight-decay term;
    ``"auto"`` = 0.1 * tr(H) / p (Hutchinson estimate; see ``precompute.influence.base.auto_damping``).
    ``params`` picks the parameters gradients are taken over: ``"all"``, ``"last_layer"`` or a list
    of parameter-name prefixes. ``options`` holds per-method settings, e.g. ``{exact = {max_params = 5000}}``.
    """

    methods: list[str] = field(default_factory=lambda: ["exact", "graddot", "gradcos", "tracin"])
    damping: float | str = 1e-3
    params: Any = "all"
    topk: int = 50
    train_batch_size: int = 512
    test_batch_size: int = 256
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    compression: dict[str, Any] = field(default_factory=dict)
    store_scores: str = "auto"
    store_dtype: str = "auto"

    def validate(self) -> None:
        """Types and ranges; the method names and their options are checked against the estimator
        registry by :func:`precompute.influence.registry.check_influence_config`."""
        _check(isinstance(self.methods, list) and all(isinstance(m, str) for m in self.methods),
               "influence.methods", "must be a list of method names, e.g. [\"graddot\"]", self.methods)
        _check(len(self.methods) > 0, "influence.methods", "must name at least one method", self.methods)
        _check(len(set(self.methods)) == len(self.methods), "influence.methods", "lists a method twice", self.methods)
        _check(isinstance(self.options, dict), "influence.options", "must be a table of per-method tables",
               self.options)
        check_damping(self.damping)
        _check(isinstance(self.topk, int) and self.topk >= 1, "influence.topk", "must be an integer >= 1", self.topk)
        _check(self.params in ("all", "last_layer") or (isinstance(self.params, list) and self.params),
               "influence.params", "must be 'all', 'last_layer' or a list of parameter-name prefixes", self.params)
        for key in ("train_batch_size", "test_batch_size"):
            v = getattr(self, key)
            _check(isinstance(v, int) and v >= 1, f"influence.{key}", "must be an integer >= 1", v)
        _check(isinstance(self.compression, dict), "influence.compression",
               "must be a table, e.g. { kind = \"factored\", dim = 4096 }", self.compression)
        _check(self.store_scores in STORE_SCORES, "influence.store_scores", f"must be one of {list(STORE_SCORES)}",
               self.store_scores)
        _check(self.store_dtype in STORE_DTYPES, "influence.store_dtype", f"must be one of {list(STORE_DTYPES)}",
               self.store_dtype)


@dataclass
class EmbeddingConfig:
    """UMAP of penultimate-layer features of train+test (computed in precompute, never in the UI)."""

    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        _check(isinstance(self.n_neighbors, int) and self.n_neighbors >= 2, "embedding.n_neighbors",
               "must be an integer >= 2", self.n_neighbors)
        _check(0.0 <= self.min_dist <= 1.0, "embedding.min_dist", "must be in [0, 1]", self.min_dist)


@dataclass
class MislabelConfig:
    """Suspected-mislabel rankings (see docs/mislabels.md).

    ``folds`` >= 2: k-fold retraining of the run's model for out-of-fold probabilities (cleanlab);
    0 skips cleanlab. ``detector``: Outlier Gradient Analysis detector, ``isolation_forest`` or
    ``lof``. ``topk``: proponents/opponents and label-vote neighbours kept per training sample.
    """

    enabled: bool = True
    folds: int = 5
    detector: str = "isolation_forest"
    topk: int = 10
    seed: int = 0

    def validate(self) -> None:
        _check(isinstance(self.enabled, bool), "mislabels.enabled", "must be true or false", self.enabled)
        _check(isinstance(self.folds, int) and (self.folds == 0 or self.folds >= 2), "mislabels.folds",
               "must be 0 (no cleanlab) or an integer >= 2", self.folds)
        _check(self.detector in ("isolation_forest", "lof"), "mislabels.detector",
               "must be 'isolation_forest' or 'lof'", self.detector)
        _check(isinstance(self.topk, int) and self.topk >= 1, "mislabels.topk", "must be an integer >= 1", self.topk)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


NOT_IDENTITY = ("device", "memory_budget", "chunk_rows")


@dataclass
class RunConfig:
    """Everything that determines a cache. ``device``, ``memory_budget`` and ``chunk_rows`` are not part
    of a run's identity (they change how the work is cut, never the result)."""

    name: str = "digits"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    mislabels: MislabelConfig = field(default_factory=MislabelConfig)
    device: str = "auto"
    #: bytes for batches and store chunks, e.g. "4GB" (None: a quarter of the machine's memory, <= 8 GB)
    memory_budget: str | int | None = None
    #: rows per gradient-store chunk (None: from the memory budget); never changes the results
    chunk_rows: int | None = None

    def validate(self) -> RunConfig:
        _check(is_safe_name(self.name), "name",
               "must be a non-empty folder name of letters, digits, '-', '_' or '.', not starting with '.'", self.name)
        _check(self.device in DEVICES, "device", f"must be one of {list(DEVICES)}", self.device)
        _check(self.chunk_rows is None or (isinstance(self.chunk_rows, int) and not isinstance(self.chunk_rows, bool)
                                           and self.chunk_rows >= 1), "chunk_rows", "must be an integer >= 1",
               self.chunk_rows)
        check_types(RunConfig, {k: getattr(self, k) for k in ("name", "device", "memory_budget", "chunk_rows")}, "",
                    "config")
        for key in ("data", "model", "train", "influence", "embedding", "mislabels"):
            sub = getattr(self, key)  # types first (configs built in Python skip from_dict's check)
            check_types(type(sub), {f.name: getattr(sub, f.name) for f in fields(sub)}, f"{key}.", "config")
        for sub in (self.data, self.model, self.train, self.influence, self.embedding, self.mislabels):
            sub.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The part of the config that determines the cache contents (everything but device)."""
        d = self.to_dict()
        for key in NOT_IDENTITY:
            d.pop(key)
        d["data"].pop("workers", None)  # how many loader processes read the data: never the result
        for sec, key in (("model", "checkpoint_sha256"), ("model", "factory_sha256"), ("data", "factory_sha256")):
            if d[sec].get(key) is None:  # only runs of a user's model / datasets file have them
                d[sec].pop(key, None)
        if d["train"].get("distributed") == "rank0":  # the default: the same model as one process trains
            d["train"].pop("distributed")
        for key, default in NOISE_DEFAULTS.items():
            if d["data"].get(key) == default:
                d["data"].pop(key, None)
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                    "influence": InfluenceConfig, "embedding": EmbeddingConfig, "mislabels": MislabelConfig}
        kwargs: dict[str, Any] = {}
        top_keys = {f.name for f in fields(cls)}
        for key, value in raw.items():
            if key not in top_keys:
                raise ConfigError(f"{source}: unknown key {key!r}; known keys: {sorted(top_keys)}")
            if key in sections:
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: [{key}] must be a table")
                known = {f.name for f in fields(sections[key])}
                for sub in value:
                    if sub not in known:
                        raise ConfigError(f"{source}: unknown key {key}.{sub!r}; known keys: {sorted(known)}")
                check_types(sections[key], value, f"{key}.", source)
                kwargs[key] = sections[key](**value)
            else:
                check_types(cls, {key: value}, "", source)
                kwargs[key] = value
        return cls(**kwargs)


def load_config(path: str | Path) -> RunConfig:
    """Read a TOML run config; raises ConfigError naming the file on any problem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found; pass an existing TOML file to --config")
    try:
        raw = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc}); fix the syntax") from None
    resolve_relative_paths(raw, p.resolve().parent)
    return RunConfig.from_dict(raw, source=str(p))


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Apply dotted overrides such as ``{"train.epochs": 5}`` (from CLI flags); None values are skipped."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        target: Any = cfg
        *path, last = dotted.split(".")
        for part in path:
            target = getattr(target, part)
        setattr(target, last, value)
    return cfg
