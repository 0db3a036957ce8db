"""On-disk stores of train-side factors and the streamed scoring over them (see docs/cache-format.md)."""

from precompute.store.gradient_store import GradientStore, StoreSpec, chunk_rows_for

__all__ = ["GradientStore", "StoreSpec", "chunk_rows_for"]
