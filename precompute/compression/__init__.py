"""Compressed per-sample gradients ``[b, k]`` that never materialise ``[b, p]`` for big layers.

``factored`` (LoGra, Choe et al. 2024): per Linear/Conv2d layer, ``sum_t (P_out^T g_t)(P_in^T a_t)^T``
with seeded Gaussian ``P_out``, ``P_in``; ``dropout`` (Toward Efficient Influence Function: Dropout
as a Compression Tool, 2025): a seeded subset of output and input units, rescaled; other parameters
get a seeded dense Gaussian projection; ``none``: exact gradients. See docs/methods.md.
"""

from precompute.compression.compressor import GradientCompressor
from precompute.compression.config import CompressionConfig

__all__ = ["CompressionConfig", "GradientCompressor"]
