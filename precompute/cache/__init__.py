"""Writing the on-disk cache (the names and the reader are in cache_format, which needs no torch)."""

from precompute.cache.scores import ScoreWriter, topk_sorted
from precompute.cache.writer import CacheWriter

__all__ = ["CacheWriter", "ScoreWriter", "topk_sorted"]
