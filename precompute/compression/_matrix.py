"""A Linear/Conv2d layer's gradient as a matrix ``M [d_out, d_in']`` (bias as the last column).

The same view as :class:`precompute.influence._kron.KronLayer` (conv weights flattened as
``[out, C * kh * kw]``, ``unfold`` order; the bias folded into the activation as a constant 1), kept
here because :mod:`precompute.compression` sits below :mod:`precompute.influence` (estimators and
the store import it), so it must not import back from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerMatrix:
    """One Linear/Conv2d layer with where its weight/bias sit in the flat ParamSpace vector."""

    name: str
    module: nn.Module
    w_slice: slice
    b_slice: slice | None
    n_out: int
    n_in: int  # columns of M, incl. the bias column

    @property
    def n_w(self) -> int:
        return self.n_in - (1 if self.b_slice is not None else 0)

    def to_matrix(self, g: torch.Tensor) -> torch.Tensor:
        """Flat ``[b, p]`` -> this layer's gradient matrices ``[b, d_out, d_in']``."""
        parts = [g[:, self.w_slice].reshape(len(g), self.n_out, -1)]
        if self.b_slice is not None:
            parts.append(g[:, self.b_slice].reshape(len(g), self.n_out, 1))
        return torch.cat(parts, dim=2)

    def activations(self, inp: torch.Tensor) -> torch.Tensor:
        """Layer input -> activation rows ``[b, L, d_in']`` (conv: unfold patches; bias column 1)."""
        a = patches(inp, self.module) if isinstance(self.module, nn.Conv2d) else inp.reshape(len(inp), -1, inp.shape[-1])
        if self.b_slice is None:
            return a
        return torch.cat([a, torch.ones(*a.shape[:2], 1, dtype=a.dtype, device=a.device)], dim=2)


def patches(inp: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``unfold`` patches ``[b, L, C * kh * kw]`` of a Conv2d input, in ``unfold``'s order (also K-FAC's).

    Without dilation: strided views of the padded input and one copy (several times faster than
    ``im2col`` for small images); with dilation: ``nn.functional.unfold``.
    """
    if conv.dilation != (1, 1):
        return nn.functional.unfold(inp, conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                                    stride=conv.stride).transpose(1, 2)
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    padded = nn.functional.pad(inp, (pw, pw, ph, ph)) if ph or pw else inp
    views = padded.unfold(2, kh, sh).unfold(3, kw, sw)  # [b, C, H', W', kh, kw]
    return views.permute(0, 2, 3, 1, 4, 5).reshape(len(inp), -1, inp.shape[1] * kh * kw)
