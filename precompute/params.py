"""Choosing the parameters influence is computed over, and flattening them to vectors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from precompute.errors import ConfigError
from precompute.models import last_linear


def select_parameters(model: nn.Module, spec: str | Sequence[str] = "all") -> list[str]:
    """Names of the trainable parameters picked by ``spec``.

    ``"all"``: every trainable parameter; ``"last_layer"``: the weight and bias of the last Linear;
    a list: every parameter whose name starts with one of the given prefixes.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if spec == "all":
        return names
    if spec == "last_layer":
        head_name, _ = last_linear(model)
        return [n for n in names if n.startswith(head_name + ".")]
    picked = [n for n in names if any(n == s or n.startswith(s + ".") or n.startswith(s) for s in spec)]
    if not picked:
        raise ConfigError(f"influence.params: no parameter matches {list(spec)}; model parameters are {names}")
    return picked


class ParamSpace:
    """A fixed ordered set of named parameters, mapped to and from flat vectors ``[p]``."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        all_params = dict(model.named_parameters())
        self.names = list(names)
        self.shapes = [tuple(all_params[n].shape) for n in self.names]
        self.numels = [math.prod(s) for s in self.shapes]
        self.size = sum(self.numels)

    def params(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Detached copies of the selected parameters."""
        all_params = dict(model.named_parameters())
        return {n: all_params[n].detach().clone() for n in self.names}

    def frozen(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Everything the model needs besides the selected parameters (other params and buffers)."""
        out = {n: p.detach() for n, p in model.named_parameters() if n not in self.names}
        out.update({n: b.detach() for n, b in model.named_buffers()})
        return out

    def flatten(self, tensors: dict[str, torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
        """Concatenate ``{name: [*batch, *shape]}`` to ``[*batch, p]``."""
        parts = [tensors[n].reshape(*tensors[n].shape[:batch_dims], -1) for n in self.names]
        return torch.cat(parts, dim=-1)

    def flatten_into(self, tensors: dict[str, torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        """Write ``{name: [b, *shape]}`` into the rows ``out [b, p]`` (one copy, no concatenation)."""
        start = 0
        for n, k in zip(self.names, self.numels, strict=True):
            out[:, start:start + k] = tensors[n].reshape(len(out), k)
            start += k
        return out

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``[*batch, p]`` back to ``{name: [*batch, *shape]}``."""
        batch = vec.shape[:-1]
        out, start = {}, 0
        for n, shape, k in zip(self.names, self.shapes, self.numels, strict=True):
            out[n] = vec[..., start:start + k].reshape(*batch, *shape)
            start += k
        return out

    def layer_slices(self) -> dict[str, slice]:
        """Flat-vector slice of each module (parameters grouped by their module prefix)."""
        groups: dict[str, slice] = {}
        start = 0
        for n, k in zip(self.names, self.numels, strict=True):
            module = n.rsplit(".", 1)[0] if "." in n else n
            s = groups.get(module)
            groups[module] = slice(s.start if s else start, start + k)
            start += k
        return groups
