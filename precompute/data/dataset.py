"""The in-memory dataset a run works on, and the loader that dispatches on ``data.source``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from precompute.config import DataConfig
from precompute.errors import DataError


@dataclass
class SplitDataset:
    """A train/test split ready for training.

    Shapes: ``x_*`` ``[n, *input_shape]`` float32; ``y_*`` ``[n]`` int64 (``y_train`` is the label the
    model is trained on, after any injected noise); ``images_*`` ``[n, H, W]`` or ``[n, H, W, 3]``
    uint8 for rendering; ``y_train_original`` ``[n_train]``; ``flipped`` ``[n_train]`` bool.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    images_train: np.ndarray
    images_test: np.ndarray
    class_names: list[str]
    y_train_original: np.ndarray
    flipped: np.ndarray
    train_source_index: np.ndarray
    test_source_index: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        return len(self.y_test)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def fingerprint(self) -> str:
        """sha256 over inputs and (possibly noisy) labels of both splits."""
        h = hashlib.sha256()
        for arr in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]


def inject_label_noise(y: np.ndarray, n_classes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``round(fraction * n)`` labels, chosen at random, each to a uniformly random *other* class.

    Returns ``(noisy_labels [n], flipped [n] bool)``; deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    n_flip = int(round(fraction * n))
    flipped = np.zeros(n, dtype=bool)
    noisy = y.copy()
    if n_flip == 0:
        return noisy, flipped
    idx = rng.choice(n, size=n_flip, replace=False)
    offsets = rng.integers(1, n_classes, size=n_flip)
    noisy[idx] = (y[idx] + offsets) % n_classes
    flipped[idx] = True
    return noisy, flipped


def load_dataset(cfg: DataConfig) -> SplitDataset:
    """Load and split the configured dataset, then inject label noise if asked."""
    if cfg.source == "digits":
        from precompute.data.digits import load_digits_split

        ds = load_digits_split(cfg.test_fraction, cfg.split_seed)
    else:  # validated earlier; kept for a clear message if called directly
        raise DataError(f"data.source: unknown source {cfg.source!r}")
    if cfg.label_noise > 0:
        ds.y_train, ds.flipped = inject_label_noise(ds.y_train_original, ds.n_classes, cfg.label_noise, cfg.noise_seed)
    return ds
