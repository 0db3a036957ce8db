"""``load_dataset``: the configured source (digits, image folder, table, npz, factory), split, noised,
relabelled. Image folders, npz and factories come back streamed (inputs read by rows on demand)."""

from __future__ import annotations

from precompute.config import DataConfig
from precompute.data.dataset import (
    SplitDataset,
    apply_exclude,
    apply_label_noise,
    apply_labels_override,
)
from precompute.data.digits import load_digits_split
from precompute.data.image_folder import load_image_folder
from precompute.data.npy import load_npz
from precompute.data.tabular import load_table
from precompute.errors import DataError


def load_dataset(cfg: DataConfig) -> SplitDataset:
    """Load and split the configured dataset, then inject label noise if asked."""
    if cfg.source == "digits":
        ds = load_digits_split(cfg.test_fraction, cfg.split_seed)
    elif cfg.source == "image_folder":
        size = tuple(cfg.image_size) if cfg.image_size else None
        ds = load_image_folder(cfg.path, cfg.image_mode, size, cfg.test_fraction, cfg.split_seed, cfg.on_corrupt,
                               cfg.class_names, workers=cfg.workers)
    elif cfg.source == "table":
        ds = load_table(cfg.path, cfg.label_column, cfg.feature_columns, cfg.test_fraction, cfg.split_seed,
                        cfg.class_names)
    elif cfg.source == "npz":
        ds = load_npz(cfg.path, cfg.class_names)
    elif cfg.source == "factory":
        from precompute.data.factory import load_factory_dataset

        ds = load_factory_dataset(str(cfg.factory), cfg.class_names, cfg.workers)
    else:  # validated earlier; kept for a clear message if called directly
        raise DataError(f"data.source: unknown source {cfg.source!r}")
    if cfg.label_noise > 0:
        apply_label_noise(ds, cfg)  # symmetric, pairs or class-conditional (data.noise_kind)
    if cfg.labels_override:
        apply_labels_override(ds, cfg.labels_override)
    if cfg.exclude:  # after the override: both use the reviewed run's training indices
        apply_exclude(ds, cfg.exclude)
    return ds
