"""Planning a compressor: which path each parameter group takes, how ``dim`` is split, seeded matrices.

A *group* is the parameters of the space that one module owns directly (names grouped by their module
prefix, as :meth:`ParamSpace.layer_slices` does). Each group takes one path:

- ``hooks`` (kinds ``factored`` / ``dropout``): an ``nn.Linear`` or ``nn.Conv2d`` (groups 1, zero
  integer padding) with more than ``dense_below`` parameters, all its trainable parameters in the
  space (the weight at least), its parameters not shared with another module, called exactly once
  per forward with the batch as dim 0. Its activations and output gradients are captured by hooks.
- ``local`` (kind ``dense`` / ``identity``): any other leaf module with the same once-per-forward,
  not-shared, batch-first property (small Linear/Conv, BatchNorm in eval mode, LayerNorm, ...): the
  per-sample gradient of its parameters is ``vmap(grad)`` of that module alone, fed with the captured
  input and output gradient, then projected densely.
- ``global`` (kind ``dense`` / ``identity``): everything else (shared parameters, modules called twice,
  parameters used by a parent's own forward): ``vmap(grad)`` of the whole model restricted to them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from precompute.compression._matrix import LayerMatrix
from precompute.errors import ConfigError, MethodError
from precompute.params import ParamSpace

#: rows of a dense Gaussian projection generated per seeded block (bounded memory for any group size)
DENSE_BLOCK_ROWS = 8192


@dataclass
class Probe:
    """What one forward on the example batch showed about a module owning space parameters."""

    calls: int = 0
    batch_first: bool = True  # every tensor argument and the output have the batch as dim 0
    tensor_out: bool = True  # the output is one tensor
    clone_out: bool = False  # the output is modified in place later in the forward (e.g. ReLU(inplace))
    clone_in: bool = False  # an input is modified in place later in the forward
    refs: list[tuple[torch.Tensor, int, str]] = field(default_factory=list)


@dataclass
class Group:
    """One parameter group: its path, its width and where it sits in the space and in the output."""

    name: str
    path: str  # "hooks" | "local" | "global" | "exact"
    params: list[str]
    index: torch.Tensor  # flat positions of its parameters in the space, ParamSpace order, [numel]
    module: nn.Module | None = None
    layer: LayerMatrix | None = None  # hooks path: the matrix view [d_out, d_in'] (bias as last column)
    kind: str = "dense"  # "factored" | "dropout" | "dense" | "identity"
    k: int = 0
    k_out: int = 0
    k_in: int = 0
    start: int = 0
    clone_out: bool = False
    clone_in: bool = False

    @property
    def numel(self) -> int:
        return len(self.index)

    @property
    def d_out(self) -> int:
        return self.layer.n_out if self.layer is not None else 0

    @property
    def d_in(self) -> int:
        return self.layer.n_in if self.layer is not None else 0

    @property
    def cols(self) -> slice:
        return slice(self.start, self.start + self.k)

    def describe(self) -> dict[str, Any]:
        """JSON-able layout entry (see :meth:`GradientCompressor.layout`)."""
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "path": self.path, "params": list(self.params),
                             "numel": self.numel, "k": self.k, "columns": [self.start, self.start + self.k]}
        if self.layer is not None:
            d.update(shape=[self.d_out, self.d_in], k_out=self.k_out, k_in=self.k_in,
                     side_out=side_kind(self.kind, self.k_out, self.d_out),
                     side_in=side_kind(self.kind, self.k_in, self.d_in), order="[k_out, k_in] row-major")
        else:
            d["shape"] = [self.numel]
        return d


def side_kind(kind: str, k: int, d: int) -> str:
    if k >= d:
        return "identity"
    return "gaussian" if kind == "factored" else "subset"


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from the parts' text (independent of Python's hash randomisation)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def gaussian(seed: int, name: str, tag: str, rows: int, k: int) -> torch.Tensor:
    """Seeded ``[rows, k]`` float64 with entries N(0, 1/k), so ``E[P P^T] = I`` (inner products kept)."""
    gen = torch.Generator().manual_seed(stable_seed(seed, name, tag))
    return torch.randn(rows, k, generator=gen, dtype=torch.float64) / math.sqrt(k)


def subset(seed: int, name: str, tag: str, d: int, k: int) -> torch.Tensor:
    """Seeded sorted ``k`` of ``range(d)`` (a structured dropout mask), ``[k]`` int64."""
    gen = torch.Generator().manual_seed(stable_seed(seed, name, tag))
    return torch.randperm(d, generator=gen)[:k].sort().values


def probe(model: nn.Module, owners: list[str], example_x: torch.Tensor) -> dict[str, Probe]:
    """Run one no-grad eval-mode forward on ``example_x`` (two samples at least) with hooks on the
    ``owners`` modules; report call counts, batch-first shapes and in-place modifications."""
    x = example_x if len(example_x) >= 2 else torch.cat([example_x, example_x])
    b = len(x)
    out: dict[str, Probe] = {m: Probe() for m in owners}

    def hook_for(name: str):
        def hook(_mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            pr = out[name]
            pr.calls += 1
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            pr.tensor_out &= isinstance(output, torch.Tensor)
            pr.batch_first &= (bool(tensors) and isinstance(args[0], torch.Tensor)
                               and all(t.dim() > 0 and t.shape[0] == b for t in tensors)
                               and not any(isinstance(v, torch.Tensor) for v in kwargs.values())
                               and isinstance(output, torch.Tensor) and output.dim() > 0
                               and output.shape[0] == b)
            pr.refs += [(t, t._version, "in") for t in tensors]
            if isinstance(output, torch.Tensor):
                pr.refs.append((output, output._version, "out"))
        return hook

    modes = [(m, m.training) for m in model.modules()]
    handles = [model.get_submodule(m).register_forward_hook(hook_for(m), with_kwargs=True) for m in owners]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, t in modes:
            m.training = t
    for pr in out.values():
        for t, v, side in pr.refs:
            if t._version != v:
                pr.clone_out |= side == "out"
                pr.clone_in |= side == "in"
        pr.refs = []
    return out


def shared_params(model: nn.Module) -> set[int]:
    """``id`` of every parameter tensor owned by more than one module (tied weights)."""
    owners: dict[int, set[int]] = {}
    for mod in model.modules():
        for p in mod._parameters.values():
            if p is not None:
                owners.setdefault(id(p), set()).add(id(mod))
    return {pid for pid, mods in owners.items() if len(mods) > 1}


def _factorable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def build_groups(model: nn.Module, space: ParamSpace, example_x: torch.Tensor, kind: str,
                 dense_below: int) -> list[Group]:
    """The parameter groups of ``space`` in ParamSpace order (first appearance), each with its path."""
    offsets, start = {}, 0
    for n, k in zip(space.names, space.numels, strict=True):
        offsets[n] = slice(start, start + k)
        start += k
    by_module: dict[str, list[str]] = {}
    for n in space.names:
        by_module.setdefault(n.rpartition(".")[0], []).append(n)
    if kind == "none":
        return [Group(m, "exact", names, _index(names, offsets), kind="identity") for m, names in by_module.items()]
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is None:
            raise MethodError(f"compression: {name!r} ({type(mod).__name__}) has no running statistics, so even "
                              "in eval mode it normalises with batch statistics, which couples the samples of a "
                              "batch; per-sample gradients are undefined there (use track_running_stats=True)")
    owners = list(by_module)
    probes = probe(model, owners, example_x)
    shared = shared_params(model)
    groups = []
    for m, names in by_module.items():
        module = model.get_submodule(m)
        own = {leaf: p for leaf, p in module.named_parameters(recurse=False)}
        leaves = [n.rpartition(".")[2] for n in names]
        pr = probes.get(m, Probe(calls=0))
        ok = (pr.calls == 1 and pr.batch_first and pr.tensor_out
              and not any(id(own[leaf]) in shared for leaf in leaves))
        trainable = {leaf for leaf, p in own.items() if p.requires_grad}
        g = Group(m, "global", names, _index(names, offsets), module=module,
                  clone_out=pr.clone_out, clone_in=pr.clone_in)
        if (ok and kind in ("factored", "dropout") and _factorable(module) and "weight" in leaves
                and trainable <= set(leaves) and set(leaves) <= {"weight", "bias"} and g.numel > dense_below):
            w = module.weight
            has_b = "bias" in leaves
            g.layer = LayerMatrix(m, module, offsets[f"{m}.weight"], offsets[f"{m}.bias"] if has_b else None,
                                w.shape[0], w.numel() // w.shape[0] + int(has_b))
            g.path, g.kind = "hooks", kind
        elif ok and not any(True for _ in module.children()):
            g.path = "local"
        groups.append(g)
    return groups


def _index(names: list[str], offsets: dict[str, slice]) -> torch.Tensor:
    return torch.cat([torch.arange(offsets[n].start, offsets[n].stop) for n in names])


def _factor(budget: int, d_out: int, d_in: int) -> tuple[int, int]:
    """``(k_out, k_in)`` for a layer budget s: ``k_out = floor(sqrt(s))``, ``k_in = floor(s / k_out)``,
    each capped by its side (d_out / d_in') with the capped side's slack given to the other;
    ``(d_out, d_in)`` when the budget covers the layer."""
    if budget >= d_out * d_in:
        return d_out, d_in
    k_out = max(1, min(d_out, math.isqrt(budget)))
    k_in = max(1, min(d_in, budget // k_out))
    if k_in == d_in:
        k_out = max(1, min(d_out, budget // d_in))
    return k_out, k_in


def split_dims(groups: list[Group], dim: int, overrides: dict[str, Any]) -> None:
    """Set every group's ``k`` (``k_out``, ``k_in``), ``kind`` and output ``start`` in place.

    Overrides first (a pair ``[k_out, k_in]`` is taken as is; an int is the layer's budget). The rest
    of ``dim`` is water-filled: every group gets an equal share; groups smaller than their share are
    kept whole (identity) and their slack is shared among the others, until stable. A factored/dropout
    layer turns its share s into ``k_out = floor(sqrt(s))``, ``k_in = floor(s / k_out)`` (each capped
    by d_out / d_in', the slack moved to the other side); a dense group takes ``k = s``. Total width <= ``dim``; = p if ``dim >= p``.
    """
    known = {g.name: g for g in groups}
    for name in overrides:
        if name not in known:
            raise ConfigError(f"influence.compression.layer_dims.{name}: no such parameter group; "
                              f"groups are {sorted(known)}")
    budgets: dict[str, int] = {}
    for name, v in overrides.items():
        g = known[name]
        if isinstance(v, list):
            if g.layer is None:
                raise ConfigError(f"influence.compression.layer_dims.{name}: [k_out, k_in] is only for "
                                  f"factored/dropout layers; {name!r} is projected densely ({g.numel} "
                                  "parameters); give an integer k")
            if v[0] > g.d_out or v[1] > g.d_in:
                raise ConfigError(f"influence.compression.layer_dims.{name}: {v} exceeds the layer's "
                                  f"[d_out, d_in'] = {[g.d_out, g.d_in]}")
            g.k_out, g.k_in = v
        else:
            budgets[name] = min(v, g.numel)
    free = [g for g in groups if g.name not in overrides]
    rest = dim - sum(min(v, known[n].numel) if isinstance(v, int) else v[0] * v[1] for n, v in overrides.items())
    if free and rest < len(free):
        raise ConfigError(f"influence.compression.dim: {dim} leaves {max(rest, 0)} columns for {len(free)} "
                          "parameter groups without a layer_dims entry; raise dim (at least one per group)")
    while free:
        share = rest // len(free)
        whole = [g for g in free if g.numel <= share]
        if not whole:
            budgets.update({g.name: share for g in free})
            break
        for g in whole:
            budgets[g.name] = g.numel
            rest -= g.numel
        free = [g for g in free if g.numel > share]
    start = 0
    for g in groups:
        if g.layer is not None:
            if g.name in budgets:
                g.k_out, g.k_in = _factor(budgets[g.name], g.d_out, g.d_in)
            g.k = g.k_out * g.k_in
        else:
            g.k = budgets[g.name]
            g.kind = "identity" if g.k >= g.numel else "dense"
        g.start = start
        start += g.k
