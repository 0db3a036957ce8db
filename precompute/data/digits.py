"""scikit-learn's handwritten digits (ships inside scikit-learn: no download)."""

from __future__ import annotations

import numpy as np

from precompute.data.dataset import SplitDataset


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> SplitDataset:
    """1,797 8x8 grayscale digits, 10 classes, stratified deterministic split.

    Inputs are ``[n, 1, 8, 8]`` float32 scaled to [0, 1]; images are ``[n, 8, 8]`` uint8 (0-255).
    scikit-learn is imported here, not with the module (0.3-0.9 s and ~70 MB that a process using
    only the estimators does not need).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32)  # [1797, 8, 8], values 0..16
    labels = bunch.target.astype(np.int64)
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        index, test_size=test_fraction, random_state=seed, stratify=labels, shuffle=True
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    x = (images / 16.0)[:, None, :, :]
    pix = np.clip(np.round(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    y_train = labels[train_idx]
    return SplitDataset(
        name="digits",
        x_train=x[train_idx],
        y_train=y_train.copy(),
        x_test=x[test_idx],
        y_test=labels[test_idx],
        images_train=pix[train_idx],
        images_test=pix[test_idx],
        class_names=[str(c) for c in range(10)],
        y_train_original=y_train.copy(),
        flipped=np.zeros(len(train_idx), dtype=bool),
        train_source_index=train_idx,
        test_source_index=test_idx,
    )
