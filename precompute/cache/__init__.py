"""Writing the on-disk cache (the reader is explorer.cache, which needs no torch)."""

from precompute.cache.scores import ScoreWriter, topk_sorted
from precompute.cache.writer import CacheWriter

__all__ = ["CacheWriter", "ScoreWriter", "topk_sorted"]
