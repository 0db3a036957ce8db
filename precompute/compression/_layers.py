"""The two Kronecker sides of a factored/dropout layer, applied without forming ``[b, p]``.

In-side (activations): ``a_t [d_in']`` at each of the layer's L positions (Conv2d: the ``unfold``
patch, ``(C, kh, kw)`` order, as in :class:`~precompute.compression._matrix.LayerMatrix`; a trailing 1 when
the bias is in the space) -> ``[b, L, k_in]``. For a Conv2d the Gaussian ``P_in^T a_t`` is itself a
convolution (kernel ``P_in[:C*kh*kw]^T`` reshaped to ``[k_in, C, kh, kw]``, bias ``P_in[-1]``), so
patches are never materialised; a dropout subset is a strided gather of the selected (c, i, j) taps.
Out-side (output gradients ``g_t [d_out]``) -> ``[b, k_out, L]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from precompute.compression._matrix import patches
from precompute.compression.plan import Group, gaussian, subset


@dataclass
class Sides:
    """Prepared sides of one layer in one dtype/device; ``None`` = identity on that side."""

    out_mat: torch.Tensor | None = None  # factored: P_out^T [k_out, d_out]
    out_idx: torch.Tensor | None = None  # dropout: kept output units [k_out]
    in_mat: torch.Tensor | None = None  # factored Linear: P_in [d_in', k_in]
    in_idx: torch.Tensor | None = None  # dropout: kept input columns [k_in]
    kernel: torch.Tensor | None = None  # factored Conv2d: [k_in, C, kh, kw]
    kernel_bias: torch.Tensor | None = None  # factored Conv2d with bias: [k_in]
    scale: float = 1.0


def side_matrices(g: Group, seed: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Float64 ``(S_out [d_out, k_out], S_in [d_in', k_in])`` (None = identity) from the seeds: the
    Gaussian, or the columns of the identity that a dropout subset keeps (unscaled)."""
    mats = []
    for tag, d, k in (("out", g.d_out, g.k_out), ("in", g.d_in, g.k_in)):
        if k >= d:
            mats.append(None)
        elif g.kind == "factored":
            mats.append(gaussian(seed, g.name, tag, d, k))
        else:
            mats.append(torch.eye(d, dtype=torch.float64)[:, subset(seed, g.name, tag, d, k)])
    return mats[0], mats[1]


def prepare(g: Group, seed: int, dtype: torch.dtype, device: torch.device) -> Sides:
    """The layer's sides ready to apply in ``dtype`` on ``device``."""
    s = Sides(scale=(g.d_out / g.k_out * g.d_in / g.k_in) ** 0.5 if g.kind == "dropout" else 1.0)
    if g.kind == "dropout":
        if g.k_out < g.d_out:
            s.out_idx = subset(seed, g.name, "out", g.d_out, g.k_out).to(device)
        if g.k_in < g.d_in:
            s.in_idx = subset(seed, g.name, "in", g.d_in, g.k_in).to(device)
        return s
    p_out, p_in = (None if m is None else m.to(dtype=dtype, device=device) for m in side_matrices(g, seed))
    s.out_mat = None if p_out is None else p_out.T.contiguous()
    if p_in is not None and isinstance(g.module, nn.Conv2d):
        w = g.module.weight
        s.kernel = p_in[:g.layer.n_w].T.reshape(g.k_in, *w.shape[1:]).contiguous()
        s.kernel_bias = p_in[g.layer.n_w].contiguous() if g.layer.b_slice is not None else None
    else:
        s.in_mat = p_in
    return s


def project_in(g: Group, inp: torch.Tensor, s: Sides) -> torch.Tensor:
    """Layer input -> projected activations ``[b, L, k_in]``."""
    lay, m = g.layer, g.module
    has_bias = lay.b_slice is not None
    if s.kernel is not None:
        conv = nn.functional.conv2d(inp, s.kernel, s.kernel_bias, m.stride, m.padding, m.dilation)
        return conv.reshape(len(inp), g.k_in, -1).transpose(1, 2)
    if s.in_idx is None and s.in_mat is None:
        return lay.activations(inp)
    if s.in_mat is not None:  # factored Linear: a @ P_in[:d_in] + P_in[d_in] (the bias row)
        a = inp.reshape(len(inp), -1, inp.shape[-1])
        out = a @ s.in_mat[:lay.n_w]
        return out + s.in_mat[lay.n_w] if has_bias else out
    idx = s.in_idx
    w_idx = idx[idx < lay.n_w]
    if isinstance(m, nn.Conv2d):
        cols = _conv_taps(inp, m, w_idx)
    else:
        cols = inp.reshape(len(inp), -1, inp.shape[-1])[..., w_idx]
    if len(w_idx) < len(idx):  # the bias column (index n_w, last after sorting) is kept
        cols = torch.cat([cols, torch.ones(*cols.shape[:2], 1, dtype=cols.dtype, device=cols.device)], dim=2)
    return cols


def _conv_taps(inp: torch.Tensor, conv: nn.Conv2d, cols: torch.Tensor) -> torch.Tensor:
    """Selected ``unfold`` columns (flat ``(c, i, j)`` indices) of a Conv2d input, ``[b, L, len(cols)]``,
    gathered from strided views of the padded input (no full patch matrix)."""
    if conv.dilation != (1, 1):
        return patches(inp, conv)[..., cols]
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    padded = nn.functional.pad(inp, (pw, pw, ph, ph)) if ph or pw else inp
    views = padded.unfold(2, kh, sh).unfold(3, kw, sw)  # [b, C, H', W', kh, kw]
    c, rem = cols // (kh * kw), cols % (kh * kw)
    taps = views[:, c, :, :, rem // kw, rem % kw]  # advanced indices apart -> [k, b, H', W']
    return taps.reshape(len(cols), len(inp), -1).permute(1, 2, 0)


def project_out(g: Group, gout: torch.Tensor, s: Sides) -> torch.Tensor:
    """Gradient w.r.t. the layer output -> projected ``[b, k_out, L]``."""
    b = len(gout)
    if isinstance(g.module, nn.Conv2d):
        g3 = gout.reshape(b, g.d_out, -1)  # [b, d_out, L]
    else:
        g3 = gout.reshape(b, -1, g.d_out).transpose(1, 2)
    if s.out_mat is not None:
        return torch.matmul(s.out_mat, g3)
    if s.out_idx is not None:
        return g3[:, s.out_idx]
    return g3
