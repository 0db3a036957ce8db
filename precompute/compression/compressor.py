"""``GradientCompressor``: per-sample gradients compressed to ``[b, k]`` without materialising ``[b, p]``.

See :mod:`precompute.compression.plan` for how parameters are grouped and ``dim`` is split, and
docs/methods.md ("Gradient compression") for the formulas. Output columns are the groups' blocks in
ParamSpace order of their first parameter; a factored/dropout block is ``[k_out, k_in]`` row-major.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from precompute.compression._layers import prepare, project_in, project_out, side_matrices
from precompute.compression.config import CompressionConfig
from precompute.compression.plan import DENSE_BLOCK_ROWS, Group, build_groups, gaussian, split_dims
from precompute.errors import MethodError
from precompute.gradients import LossFn, cross_entropy_loss, per_sample_gradients
from precompute.params import ParamSpace

FORMAT = "precompute.compression/1"
#: ``on_layer`` callback of :meth:`GradientCompressor.compress`
LayerSides = Callable[[Group, torch.Tensor, torch.Tensor, float], None]
#: dense projections up to this many entries are kept in memory; larger ones are regenerated per call
CACHE_ENTRIES = 2**24


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode for the block, then restore each one's own flag."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


class GradientCompressor:
    """Fitted to a model + ParamSpace: the groups, their widths and seeded projections (see module doc)."""

    def __init__(self, cfg: CompressionConfig, space: ParamSpace, groups: list[Group],
                 model_params: list[tuple[str, list[int]]], model_dtype: str):
        self.config = cfg
        self.space = space
        self.groups = groups
        self._model_params = model_params
        self._model_dtype = model_dtype
        self._cache: dict[tuple[torch.dtype, str], dict[str, Any]] = {}
        #: compress() splits a bigger batch into consecutive micro-batches of at most this many rows
        #: (bounded activation memory; None: one pass). Same value + same rows -> bit-identical output.
        self.max_batch: int | None = None

    @classmethod
    def create(cls, cfg: CompressionConfig, model: nn.Module, space: ParamSpace,
               example_x: torch.Tensor) -> GradientCompressor:
        """Plan the compressor: one no-grad forward on ``example_x [b0, *input]`` finds each group's path."""
        cfg.validate()
        groups = build_groups(model, space, example_x, cfg.kind, cfg.dense_below)
        if cfg.kind == "none":
            start = 0
            for g in groups:
                g.k, g.start = g.numel, start
                start += g.k
        else:
            split_dims(groups, cfg.dim, cfg.layer_dims)
        meta = [(n, list(p.shape)) for n, p in model.named_parameters()]
        return cls(cfg, space, groups, meta, str(next(model.parameters()).dtype).replace("torch.", ""))

    # ------------------------------------------------------------------ description
    @property
    def dim(self) -> int:
        """k: the total compressed width (p for ``kind = "none"``)."""
        return sum(g.k for g in self.groups)

    def layout(self) -> list[dict[str, Any]]:
        """Per group: name, kind, path, params, numel, shape, k (k_out, k_in, sides), columns [start, stop]."""
        return [g.describe() for g in self.groups]

    def summary(self) -> dict[str, Any]:
        """A short JSON-able description for manifests and logs: kind, k, p, seed, groups per kind/path."""
        count: dict[str, int] = {}
        for g in self.groups:
            count[f"{g.kind}/{g.path}"] = count.get(f"{g.kind}/{g.path}", 0) + 1
        return {"kind": self.config.kind, "k": self.dim, "p": self.space.size, "seed": self.config.seed,
                "dtype": self.config.dtype, "groups": count, "fingerprint": self.fingerprint()}

    def fingerprint(self) -> str:
        """sha256 of the format, config, layout, space and model parameter names/shapes/dtype."""
        doc = {"format": FORMAT, "config": self.config.to_dict(), "layout": self.layout(),
               "space": [[n, list(s)] for n, s in zip(self.space.names, self.space.shapes, strict=True)],
               "model": self._model_params, "model_dtype": self._model_dtype}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    # ------------------------------------------------------------------ seeded matrices
    def _sides(self, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
        """Per group, in ``dtype`` on ``device``: factored/dropout :class:`Sides`, dense ``[row blocks]``
        (None: regenerated per call, or identity)."""
        key = (dtype, str(device))
        if key in self._cache:
            return self._cache[key]
        seed, sides = self.config.seed, {}
        for g in self.groups:
            if g.layer is not None:
                sides[g.name] = prepare(g, seed, dtype, device)
            elif g.kind == "dense" and g.numel * g.k <= CACHE_ENTRIES:
                sides[g.name] = list(self._dense_blocks(g, dtype, device))
            else:
                sides[g.name] = None
        self._cache[key] = sides
        return sides

    def _dense_blocks(self, g: Group, dtype: torch.dtype, device: torch.device) -> Iterator[torch.Tensor]:
        """Row blocks ``[<= DENSE_BLOCK_ROWS, k]`` of the group's ``[numel, k]`` Gaussian, each seeded."""
        for j, r in enumerate(range(0, g.numel, DENSE_BLOCK_ROWS)):
            rows = min(DENSE_BLOCK_ROWS, g.numel - r)
            yield gaussian(self.config.seed, g.name, f"dense{j}", rows, g.k).to(dtype=dtype, device=device)

    def _project_group(self, g: Group, flat: torch.Tensor, sides: dict[str, Any]) -> torch.Tensor:
        """A dense/identity group's explicit gradients ``[b, numel]`` -> ``[b, k]``."""
        if g.kind == "identity":
            return flat
        blocks = sides[g.name]
        blocks = blocks if blocks is not None else self._dense_blocks(g, flat.dtype, flat.device)
        out = None
        for j, blk in enumerate(blocks):
            part = flat[:, j * DENSE_BLOCK_ROWS: j * DENSE_BLOCK_ROWS + len(blk)] @ blk
            out = part if out is None else out + part
        return out

    # ------------------------------------------------------------------ compression
    def compress(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn = cross_entropy_loss,
                 params: dict[str, torch.Tensor] | None = None, out: torch.Tensor | None = None,
                 on_layer: LayerSides | None = None) -> torch.Tensor:
        """Compressed per-sample loss gradients ``[b, k]`` (in ``config.dtype``) of ``x [b, *input], y [b]``.

        ``params``: values for the space's parameters (e.g. a checkpoint) used instead of the module's
        own, which are left untouched; ``out [b, k]``: written in place and returned. The model runs
        in eval mode (each module's mode restored after); rows depend on their own sample only.
        Batches above ``self.max_batch`` rows are done in consecutive micro-batches of that size.
        ``on_layer(group, a [b, L, k_in], d [b, k_out, L], scale)``: called for every factored/dropout
        layer with its projected activations and output gradients (block = scale * d @ a), e.g. to fit
        Kronecker factors in the projected space (:mod:`precompute.influence._kron_projected`).
        """
        b, k = len(x), self.dim
        ref = dict(model.named_parameters())
        dev = ref[self.space.names[0]].device
        odtype = getattr(torch, self.config.dtype)
        if out is None:
            out = torch.empty(b, k, dtype=odtype, device=dev)
        elif tuple(out.shape) != (b, k) or out.dtype != odtype:
            raise ValueError(f"out must be [{b}, {k}] {odtype} (got {list(out.shape)} {out.dtype})")
        if params is not None:
            missing = [n for n in self.space.names if n not in params]
            if missing:
                raise MethodError(f"compress: params lack {missing[:3]} (need every parameter of the space)")
        step = self.max_batch or b
        if b > step:
            for s in range(0, b, step):
                self.compress(model, x[s:s + step], y[s:s + step], loss_fn, params, out[s:s + step], on_layer)
            return out
        if b == 0:
            return out
        with eval_mode(model):
            if self.config.kind == "none":
                flat = per_sample_gradients(model, x, y, self.space, max(b, 1), params, loss_fn)
                return out.copy_(flat)
            src = params if params is not None else ref
            theta = {n: src[n].detach().to(dtype=ref[n].dtype, device=ref[n].device).requires_grad_(True)
                     for n in self.space.names}
            sides = self._sides(ref[self.space.names[0]].dtype, dev)
            if any(g.path != "global" for g in self.groups):
                self._hook_pass(model, theta, x, y, loss_fn, out, sides, on_layer)
            if any(g.path == "global" for g in self.groups):
                self._global_pass(model, theta, x, y, loss_fn, out, sides)
        return out

    def _hook_pass(self, model: nn.Module, theta: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   loss_fn: LossFn, out: torch.Tensor, sides: dict[str, Any],
                   on_layer: LayerSides | None = None) -> None:
        """One forward + one backward (to the layer outputs only) of the summed per-sample losses."""
        groups = [g for g in self.groups if g.path != "global"]
        store: dict[str, list[Any]] = {}

        def hook_for(g: Group):
            def hook(_mod: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor | None:
                if g.name in store:
                    raise MethodError(f"compress: layer {g.name!r} ran twice in one forward (it ran once when the "
                                      "compressor was created); recreate the compressor for this model")
                if g.path == "hooks":
                    store[g.name] = [project_in(g, args[0].detach(), sides[g.name]), None, output]
                else:
                    ins = tuple((t.detach().clone() if g.clone_in else t.detach()) if isinstance(t, torch.Tensor)
                                else t for t in args)
                    store[g.name] = [ins, kwargs, output]
                return output.clone() if g.clone_out else None
            return hook

        handles = [g.module.register_forward_hook(hook_for(g), with_kwargs=True) for g in groups]
        try:
            with torch.enable_grad():
                loss = loss_fn(functional_call(model, theta, (x,)), y).sum()
        finally:
            for h in handles:
                h.remove()
        absent = [g.name for g in groups if g.name not in store]
        if absent:
            raise MethodError(f"compress: layers {absent} did not run in this forward; recreate the compressor")
        live = [g for g in groups if store[g.name][2].requires_grad]
        gouts = dict(zip([g.name for g in live], torch.autograd.grad(
            loss, [store[g.name][2] for g in live], allow_unused=True) if live else [], strict=True))
        for g in groups:
            first, kwargs, output = store.pop(g.name)
            gout = gouts.get(g.name)
            gout = torch.zeros_like(output) if gout is None else gout
            if g.path == "hooks":
                side = sides[g.name]
                d = project_out(g, gout, side)
                if on_layer is not None:
                    on_layer(g, first, d, side.scale)
                block = torch.bmm(d, first).reshape(len(x), -1)
                out[:, g.cols] = block * side.scale if side.scale != 1.0 else block
            else:
                flat = _local_grads(g, theta, first, kwargs, gout)
                out[:, g.cols] = self._project_group(g, flat, sides)

    def _global_pass(self, model: nn.Module, theta: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     loss_fn: LossFn, out: torch.Tensor, sides: dict[str, Any]) -> None:
        """``vmap(grad)`` of the whole model restricted to the global groups' parameters."""
        groups = [g for g in self.groups if g.path == "global"]
        names = [n for g in groups for n in g.params]
        sub = {n: theta[n].detach() for n in names}
        rest = {n: t.detach() for n, t in theta.items() if n not in sub}

        def sample_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            logits = functional_call(model, {**rest, **p}, (xi.unsqueeze(0),))
            return loss_fn(logits, yi.unsqueeze(0)).squeeze(0)

        grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(sub, x, y)
        for g in groups:
            flat = torch.cat([grads[n].reshape(len(x), -1) for n in g.params], dim=1)
            out[:, g.cols] = self._project_group(g, flat, sides)

    # ------------------------------------------------------------------ reference
    def project_dense(self, flat_grads: torch.Tensor) -> torch.Tensor:
        """Reference: explicit per-sample gradients ``[b, p]`` (ParamSpace order) -> ``[b, k]``.

        Materialises each layer's ``kron(S_out, S_in) [d_out * d_in', k_out * k_in]`` (S: the Gaussian,
        a scaled column selection, or the identity) and each dense ``[numel, k]``; tests only, small p.
        """
        dtype, dev = flat_grads.dtype, flat_grads.device
        res = torch.empty(len(flat_grads), self.dim, dtype=getattr(torch, self.config.dtype), device=dev)
        for g in self.groups:
            if g.layer is None:
                part = flat_grads[:, g.index.to(dev)]
                if g.kind == "dense":
                    part = part @ torch.cat(list(self._dense_blocks(g, dtype, dev)))
                res[:, g.cols] = part
                continue
            mats = [torch.eye(d, dtype=dtype, device=dev) if m is None else m.to(dtype=dtype, device=dev)
                    for m, d in zip(side_matrices(g, self.config.seed), (g.d_out, g.d_in), strict=True)]
            scale = (g.d_out / g.k_out * g.d_in / g.k_in) ** 0.5 if g.kind == "dropout" else 1.0
            m = g.layer.to_matrix(flat_grads).reshape(len(flat_grads), -1)
            res[:, g.cols] = m @ torch.kron(mats[0], mats[1]) * scale
        return res


def _local_grads(g: Group, theta: dict[str, torch.Tensor], ins: tuple, kwargs: dict,
                 gout: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients ``[b, numel]`` of one leaf module's parameters from its captured inputs
    and output gradient: ``vmap`` over samples of ``grad(<module(params, input_i), gout_i>)``."""
    leaves = [n.rpartition(".")[2] for n in g.params]
    m = g.module
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None and len(ins) == 1:
        return _batch_norm_grads(m, leaves, ins[0], gout)
    p = {leaf: theta[n].detach() for leaf, n in zip(leaves, g.params, strict=True)}
    pos = [i for i, a in enumerate(ins) if isinstance(a, torch.Tensor)]

    def inner(p: dict[str, torch.Tensor], targs: list[torch.Tensor], go: torch.Tensor) -> torch.Tensor:
        args = list(ins)
        for i, t in zip(pos, targs, strict=True):
            args[i] = t.unsqueeze(0)
        return (functional_call(g.module, p, tuple(args), kwargs) * go.unsqueeze(0)).sum()

    grads = vmap(grad(inner), in_dims=(None, 0, 0))(p, [ins[i] for i in pos], gout)
    return torch.cat([grads[leaf].reshape(len(gout), -1) for leaf in leaves], dim=1)


def _batch_norm_grads(m: nn.Module, leaves: list[str], inp: torch.Tensor, gout: torch.Tensor) -> torch.Tensor:
    """Closed form for an eval-mode BatchNorm (running statistics): ``y = w * x_hat + b`` per channel,
    so per sample ``dL/dw = sum_positions g * x_hat`` and ``dL/db = sum_positions g``; ``[b, numel]``."""
    shape = (1, -1) + (1,) * (inp.dim() - 2)
    dims = tuple(range(2, inp.dim()))
    x_hat = (inp - m.running_mean.reshape(shape)) * torch.rsqrt(m.running_var.reshape(shape) + m.eps)
    parts = {"weight": lambda: (gout * x_hat).sum(dims) if dims else gout * x_hat,
             "bias": lambda: gout.sum(dims) if dims else gout}
    return torch.cat([parts[leaf]().reshape(len(gout), -1) for leaf in leaves], dim=1)
