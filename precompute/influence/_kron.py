"""Kronecker-factored curvature for Linear and Conv2d layers: layer discovery, activation/gradient capture.

A layer's gradient is handled as a matrix ``M [out, in']``: the weight gradient (Conv2d weights
flattened as ``[out, in * kh * kw]``, matching ``unfold`` patches) with the bias gradient appended as
the last column (the bias is folded into the activation as a constant 1). Only the parts selected by
the ParamSpace are present (weight and/or bias).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from precompute.compression._matrix import patches as _patches
from precompute.errors import MethodError
from precompute.influence.base import InfluenceTask

SUPPORTED = (nn.Linear, nn.Conv2d)


@dataclass
class KronLayer:
    """One Linear/Conv2d layer in the ParamSpace, with where its parameters sit in the flat vector."""

    name: str
    module: nn.Module
    w_slice: slice | None
    b_slice: slice | None
    n_out: int
    n_in: int  # columns of M, incl. the bias column

    @property
    def n_w(self) -> int:
        return self.n_in - (1 if self.b_slice is not None else 0) if self.w_slice is not None else 0

    def to_matrix(self, g: torch.Tensor) -> torch.Tensor:
        """Flat ``[b, p]`` -> this layer's gradient matrices ``[b, out, in']``."""
        parts = []
        if self.w_slice is not None:
            parts.append(g[:, self.w_slice].reshape(len(g), self.n_out, -1))
        if self.b_slice is not None:
            parts.append(g[:, self.b_slice].reshape(len(g), self.n_out, 1))
        return torch.cat(parts, dim=2)

    def put_matrix(self, m: torch.Tensor, out: torch.Tensor) -> None:
        """Write ``[b, out, in']`` back into the flat ``out [b, p]`` at this layer's positions."""
        if self.w_slice is not None:
            out[:, self.w_slice] = m[:, :, :self.n_w].reshape(len(m), -1)
        if self.b_slice is not None:
            out[:, self.b_slice] = m[:, :, -1]

    def index(self) -> torch.Tensor:
        """Flat position of each entry of M, ``[out, in']`` (for tests and dense comparisons)."""
        p = max(s.stop for s in (self.w_slice, self.b_slice) if s is not None)
        ar = torch.arange(p, dtype=torch.float64)[None]
        return self.to_matrix(ar)[0].long()

    def activations(self, inp: torch.Tensor) -> torch.Tensor:
        """Layer input -> activation rows ``[b, L, in']`` (conv: unfold patches; L positions; bias 1)."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            a = _patches(inp, m)
        else:
            a = inp.reshape(len(inp), -1, inp.shape[-1])
        cols = [a] if self.w_slice is not None else []
        if self.b_slice is not None:
            cols.append(torch.ones(*a.shape[:2], 1, dtype=a.dtype, device=a.device))
        return torch.cat(cols, dim=2)

    def out_grads(self, gout: torch.Tensor) -> torch.Tensor:
        """Gradient w.r.t. the layer output -> ``[b, L, out]``."""
        if isinstance(self.module, nn.Conv2d):
            return gout.reshape(len(gout), self.n_out, -1).transpose(1, 2)
        return gout.reshape(len(gout), -1, self.n_out)


def find_layers(task: InfluenceTask, method: str) -> list[KronLayer]:
    """The Kronecker layers covering every parameter in the task's ParamSpace, in ParamSpace order.

    Raises MethodError naming the first parameter that sits in an unsupported layer type.
    """
    model, space = task.model, task.space
    offsets, start = {}, 0
    for n, k in zip(space.names, space.numels, strict=True):
        offsets[n] = slice(start, start + k)
        start += k
    layers: dict[str, KronLayer] = {}
    for n in space.names:
        mod_name, _, leaf = n.rpartition(".")
        module = model.get_submodule(mod_name)
        if not isinstance(module, SUPPORTED) or leaf not in ("weight", "bias"):
            raise MethodError(
                f"{method}: layer {mod_name!r} ({type(module).__name__}) has influence parameters but only Linear and "
                f"Conv2d layers are supported; exclude it via influence.params (e.g. \"last_layer\") or use cg/arnoldi")
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"
                                              or isinstance(module.padding, str)):
            raise MethodError(f"{method}: layer {mod_name!r} (Conv2d) uses groups/padding_mode/string padding, "
                              "which are not supported; use explicit integer padding, groups=1, or use cg/arnoldi")
        lay = layers.get(mod_name)
        if lay is None:
            n_w = module.weight.numel() // module.weight.shape[0]
            lay = layers[mod_name] = KronLayer(mod_name, module, None, None, module.weight.shape[0], n_w)
        if leaf == "weight":
            lay.w_slice = offsets[n]
        else:
            lay.b_slice = offsets[n]
    for lay in layers.values():  # n_in = weight columns (if selected) + 1 (if the bias is selected)
        n_w = lay.n_in if lay.w_slice is not None else 0
        lay.n_in = n_w + (1 if lay.b_slice is not None else 0)
    return list(layers.values())


def output_cotangents(logits: torch.Tensor, y: torch.Tensor, fisher: str,
                      generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Vectors v ``[b, C]`` on the logits whose back-propagations give the Fisher "pseudo-gradients".

    ``ggn``: v_c = sqrt(p_c) (e_c - p) for every class c, so sum_c J^T v_c v_c^T J = J^T (diag p -
    p p^T) J is the exact GGN (= true Fisher) of the cross-entropy; ``sampled``: v = p - e_s with
    s ~ Categorical(p) drawn from ``generator``, an unbiased one-backward estimate of the same
    matrix (E[v v^T] = diag p - p p^T; kronfluence's default); ``empirical``: v = p - e_y (the real
    per-sample loss gradient, so the factors describe the empirical Fisher).
    """
    p = torch.softmax(logits.detach(), dim=1)
    if fisher in ("empirical", "sampled"):
        labels = y if fisher == "empirical" else torch.multinomial(p.double().cpu(), 1, generator=generator).flatten()
        return [p - nn.functional.one_hot(labels.to(p.device), p.shape[1]).to(p.dtype)]
    eye = torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
    return [p[:, c:c + 1].sqrt() * (eye[c] - p) for c in range(p.shape[1])]


def batch_generator(seed: int, start: int) -> torch.Generator:
    """The sampled-Fisher generator of the training batch starting at row ``start``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + start)


def capture(task: InfluenceTask, layers: list[KronLayer], fisher: str, batch_size: int,
            fn: Callable[[list[torch.Tensor], list[torch.Tensor], bool], None], seed: int = 0) -> None:
    """For each training batch and each Fisher cotangent call ``fn(acts, grads, first)`` with
    ``acts[k] [b, L, in']`` and ``grads[k] [b, L, out]`` for every layer k, in the model's dtype
    (callers accumulate in float64): one forward, then C backwards for ``ggn`` and one otherwise.
    ``first`` is True for the first cotangent of a batch (the activations are the same for all).
    ``sampled`` labels come from a generator seeded with ``seed`` and the batch's start row, so two
    passes, and any split of the batches over processes, see the same draws. In a torchrun launch only
    this rank's batches are visited (``task.fit_batch_starts``): callers all-reduce their sums."""
    model = task.model
    store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook_for(k: int):
        def hook(_m, args, out):
            if k in store:
                raise MethodError(f"layer {layers[k].name!r} is called twice in one forward; shared layers are not "
                                  "supported by Kronecker-factored methods; use cg/arnoldi")
            store[k] = (args[0].detach(), out)
        return hook

    handles = [lay.module.register_forward_hook(hook_for(k)) for k, lay in enumerate(layers)]
    try:
        for s in task.fit_batch_starts(batch_size):
            x, y = task.x_train[s:s + batch_size], task.y_train[s:s + batch_size]
            generator = batch_generator(seed, s)
            store.clear()
            with torch.enable_grad():
                logits = model(x)
            outs = [store[k][1] for k in range(len(layers))]
            acts = [lay.activations(store[k][0]) for k, lay in enumerate(layers)]
            vs = output_cotangents(logits, y, fisher, generator)
            for j, v in enumerate(vs):
                gouts = torch.autograd.grad(logits, outs, grad_outputs=v, retain_graph=j + 1 < len(vs))
                fn(acts, [lay.out_grads(g) for lay, g in zip(layers, gouts, strict=True)], j == 0)
    finally:
        for h in handles:
            h.remove()
