"""Datasets: loading, deterministic splits, synthetic label noise."""

from precompute.data.dataset import SplitDataset, inject_label_noise
from precompute.data.loading import load_dataset
from precompute.data.source import SampleArray, SampleSource

__all__ = ["SampleArray", "SampleSource", "SplitDataset", "inject_label_noise", "load_dataset"]
