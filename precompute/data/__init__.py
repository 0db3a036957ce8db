"""Datasets: loading, deterministic splits, synthetic label noise."""

from precompute.data.dataset import SplitDataset, inject_label_noise
from precompute.data.loading import load_dataset

__all__ = ["SplitDataset", "inject_label_noise", "load_dataset"]
