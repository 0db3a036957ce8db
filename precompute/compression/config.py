"""``influence.compression``: which compressor, how wide, how seeded (validated, ``to_dict()``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from precompute.errors import ConfigError

KINDS = ("none", "factored", "dropout")
OUT_DTYPES = ("float32", "float64")
PREFIX = "influence.compression"


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(cond: bool, key: str, msg: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{PREFIX}.{key}: {msg} (got {value!r}); fix it in the config file or the matching flag")


@dataclass
class CompressionConfig:
    """Settings of :class:`~precompute.compression.GradientCompressor`.

    ``kind``: ``"none"`` (exact per-sample gradients ``[b, p]``), ``"factored"`` (LoGra: per-layer
    Gaussian projections of both Kronecker sides) or ``"dropout"`` (a seeded subset of each layer's
    output and input units, rescaled). ``dim``: the target total width k, split over layers (see
    :func:`precompute.compression.plan.split_dims`); the built width ``GradientCompressor.dim`` is
    at most ``dim`` (and equals p when ``dim >= p``). ``layer_dims``: per-layer overrides,
    ``{"layer": [k_out, k_in]}`` for factored/dropout layers or ``{"layer": k}`` (any layer: its
    budget). ``dense_below``: Linear/Conv2d layers with at most this many parameters in the space
    are projected densely. ``dtype``: of the compressed output; compute is in the model's dtype.
    """

    kind: str = "none"
    dim: int = 4096
    layer_dims: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    dense_below: int = 4096
    dtype: str = "float32"

    def validate(self) -> CompressionConfig:
        _check(self.kind in KINDS, "kind", f"must be one of {list(KINDS)}", self.kind)
        _check(_int(self.dim) and self.dim >= 1, "dim", "must be an integer >= 1", self.dim)
        _check(isinstance(self.layer_dims, dict), "layer_dims",
               "must be a table {layer: [k_out, k_in]} or {layer: k}", self.layer_dims)
        for name, v in self.layer_dims.items():
            ok_int = _int(v) and v >= 1
            ok_pair = isinstance(v, list | tuple) and len(v) == 2 and all(_int(k) and k >= 1 for k in v)
            _check(isinstance(name, str) and (ok_int or ok_pair), f"layer_dims.{name}",
                   "must be an integer k >= 1 or a pair [k_out, k_in] of integers >= 1", v)
        self.layer_dims = {n: list(v) if isinstance(v, list | tuple) else v for n, v in self.layer_dims.items()}
        _check(_int(self.seed) and self.seed >= 0, "seed", "must be an integer >= 0", self.seed)
        _check(_int(self.dense_below) and self.dense_below >= 0, "dense_below", "must be an integer >= 0",
               self.dense_below)
        _check(self.dtype in OUT_DTYPES, "dtype", f"must be one of {list(OUT_DTYPES)}", self.dtype)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
