"""Suspected-mislabel rankings: suspicion scores per training sample, suggested labels and, when the
run injected label noise, detection quality per ranking method. See docs/mislabels.md."""

from precompute.mislabels.stage import run_mislabel_stage

__all__ = ["run_mislabel_stage"]
