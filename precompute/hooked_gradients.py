"""Per-sample gradients from one forward and one backward with module hooks (no ``torch.func``).

For the sum over the batch of the per-sample losses, the gradient reaching sample i's output of a
layer is that sample's own (rows do not interact), so per sample: ``nn.Linear``: ``dW = g a^T``
summed over any middle positions, ``db = g``; ``nn.Conv2d``: ``dW = g @ unfold(a)^T`` per sample,
``db = g`` summed over positions; eval-mode BatchNorm (running statistics, a fixed affine map per
channel): ``dw = sum g * x_hat``, ``db = sum g``. Used only for models whose every module is one of
those or a known parameter-free per-sample layer inside ``nn.Sequential`` containers
(:func:`hook_plan`); anything else (or a surprise at run time, e.g. an input modified in place)
goes to the ``vmap(grad)`` path in :mod:`precompute.gradients`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from precompute.params import ParamSpace

#: parameter-free layers that act on each sample alone (whatever their mode, except Dropout: eval only)
PER_SAMPLE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Tanhshrink,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Unflatten, nn.ZeroPad2d,
)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class Unsupported(Exception):
    """The hook path cannot compute this call exactly; the caller falls back to ``vmap(grad)``."""


def _per_sample_layer(m: nn.Module) -> bool:
    if isinstance(m, DROPOUTS):
        return not m.training
    if isinstance(m, nn.Flatten):
        return m.start_dim >= 1
    if isinstance(m, nn.Unflatten):
        return isinstance(m.dim, int) and m.dim >= 1
    if isinstance(m, nn.MaxPool1d | nn.MaxPool2d | nn.AdaptiveMaxPool1d | nn.AdaptiveMaxPool2d):
        return not m.return_indices
    return isinstance(m, PER_SAMPLE_LAYERS)


def _eval_batch_norm(m: nn.Module) -> bool:
    return isinstance(m, BATCH_NORMS) and not m.training and m.running_mean is not None


def hook_plan(model: nn.Module, space: ParamSpace) -> dict[str, nn.Module] | None:
    """``{module name: module}`` of the modules owning space parameters, or None when the model is not
    made only of ``nn.Sequential`` containers, Linear/Conv2d/eval BatchNorm and per-sample layers."""
    owners: dict[str, nn.Module] = {}
    wanted = set(space.names)
    tensors = [id(t) for m in model.modules() for t in m.parameters(recurse=False)]
    if len(set(tensors)) != len(tensors):
        return None  # tied parameters: one space entry feeds several modules (one module called twice is fine)
    for name, m in model.named_modules():
        own = [f"{name}.{p}" if name else p for p, _ in m.named_parameters(recurse=False)]
        if any(True for _ in m.children()):
            if type(m).forward is not nn.Sequential.forward or own:
                return None
            continue
        if isinstance(m, nn.Linear):
            pass
        elif isinstance(m, nn.Conv2d):
            if not isinstance(getattr(m, "_reversed_padding_repeated_twice", None), list | tuple):
                return None
        elif isinstance(m, BATCH_NORMS):
            if not _eval_batch_norm(m):
                return None
        elif own or not _per_sample_layer(m):
            return None
        if any(n in wanted for n in own):
            owners[name] = m
    leaves = {n.rpartition(".")[0]: n.rpartition(".")[2] for n in space.names}
    if set(leaves) - set(owners) or any(v not in ("weight", "bias") for v in leaves.values()):
        return None  # a space parameter outside those modules, or one that is not a weight/bias
    return owners


def _conv_patches(m: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """``unfold`` patches ``[b, C * kh * kw, L]`` of the layer's input, padding as the layer pads."""
    pad = list(m._reversed_padding_repeated_twice)
    if m.padding_mode != "zeros":
        a = nn.functional.pad(a, pad, mode=m.padding_mode)
        padding: tuple[int, ...] = (0, 0)
    elif pad[0] == pad[1] and pad[2] == pad[3]:
        padding = (pad[2], pad[0])
    else:  # asymmetric "same" padding
        a, padding = nn.functional.pad(a, pad), (0, 0)
    return nn.functional.unfold(a, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride)


def _layer_grads(m: nn.Module, a: torch.Tensor, g: torch.Tensor, want_weight: bool = True) -> dict[str, torch.Tensor]:
    """Per-sample ``{"weight": [b, *w.shape], "bias": [b, *b.shape]}`` from input ``a`` and output grad ``g``."""
    b = len(a)
    if isinstance(m, nn.Linear):
        if not want_weight:
            return {"bias": g.reshape(b, -1, g.shape[-1]).sum(1)}
        if a.dim() == 2:
            return {"weight": g.unsqueeze(2) * a.unsqueeze(1), "bias": g}
        a3, g3 = a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])
        return {"weight": torch.bmm(g3.transpose(1, 2), a3), "bias": g3.sum(1)}
    if isinstance(m, nn.Conv2d):
        if not want_weight:
            return {"bias": g.sum((2, 3))}
        u = _conv_patches(m, a)  # [b, C kh kw, L]
        gr, k = m.groups, u.shape[1] // m.groups
        g3 = g.reshape(b, gr, m.out_channels // gr, -1)
        w = torch.einsum("bgol,bgkl->bgok", g3, u.reshape(b, gr, k, -1))
        return {"weight": w.reshape(b, *m.weight.shape), "bias": g.sum((2, 3))}
    shape = (1, -1) + (1,) * (a.dim() - 2)  # eval BatchNorm
    dims = tuple(range(2, a.dim()))
    x_hat = (a - m.running_mean.reshape(shape)) * torch.rsqrt(m.running_var.reshape(shape) + m.eps)
    gx = g * x_hat
    return {"weight": gx.sum(dims) if dims else gx, "bias": g.sum(dims) if dims else g}


def _check_shapes(m: nn.Module, a: torch.Tensor, out: torch.Tensor, b: int) -> None:
    """The batch is dim 0 of the input and output (an unbatched conv input would mix samples)."""
    need = 4 if isinstance(m, nn.Conv2d) else 2
    if a.dim() < need or out.dim() < need or len(a) != b or len(out) != b:
        raise Unsupported(f"{type(m).__name__} input {tuple(a.shape)} is not batch-first")
    if isinstance(m, nn.Conv2d) and a.dim() != 4:
        raise Unsupported("Conv2d input is not [b, C, H, W]")


@contextmanager
def _detached_params(model: nn.Module, params: dict[str, torch.Tensor]) -> Iterator[None]:
    """Every parameter replaced by a detached tensor (``params`` for the space's, the module's own value
    otherwise) and the original ``Parameter`` objects put back after. Not ``functional_call``: with a
    module reused under two names it leaves plain tensors behind in torch 2.13."""
    saved = []
    try:
        for name, m in model.named_modules():
            for leaf, p in list(m._parameters.items()):
                if p is not None:
                    saved.append((m, leaf, p))
                    m._parameters[leaf] = params.get(f"{name}.{leaf}" if name else leaf, p).detach()
        yield
    finally:
        for m, leaf, p in saved:
            m._parameters[leaf] = p


def hooked_gradients(model: nn.Module, owners: dict[str, nn.Module], space: ParamSpace,
                     params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
                     out: torch.Tensor) -> torch.Tensor:
    """Write the per-sample gradients of ``loss_fn(model(x), y) [b]`` into ``out [b, p]`` (space order)."""
    b = len(x)
    calls: dict[str, list[list]] = {name: [] for name in owners}
    leaves: list[torch.Tensor] = []

    def hook_for(name: str):
        def hook(m: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            a = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if a is None or len(args) != 1 or not isinstance(output, torch.Tensor):
                raise Unsupported(f"{name}: not one tensor in, one out")
            _check_shapes(m, a, output, b)
            if not output.requires_grad:  # the first layer on the path: start the graph here
                leaf = output.detach().requires_grad_(True)
                leaves.append(leaf)
                output = leaf.clone()  # not the leaf itself: a later in-place op (ReLU(inplace)) may follow
            rec = [a.detach(), a._version, None]
            output.register_hook(lambda grad: rec.__setitem__(2, grad))  # grad before any in-place change
            calls[name].append(rec)
            return output
        return hook

    if torch.is_inference_mode_enabled():
        raise Unsupported("inference mode")
    handles = [m.register_forward_hook(hook_for(name)) for name, m in owners.items()]
    try:
        with torch.enable_grad(), _detached_params(model, params):
            losses = loss_fn(model(x.detach()), y)
            if losses.shape != (b,):
                raise Unsupported(f"loss of shape {tuple(losses.shape)}, not [{b}]")
            if leaves:
                torch.autograd.grad(losses.sum(), leaves, allow_unused=True)  # fills the tensor hooks
    finally:
        for h in handles:
            h.remove()
    offsets, start = {}, 0
    for n, k in zip(space.names, space.numels, strict=True):
        offsets[n] = (start, k)
        start += k
    written: set[str] = set()
    for name, m in owners.items():
        for a, version, g in calls[name]:
            if a._version != version:
                raise Unsupported(f"{name}: its input was modified in place after the layer ran")
            if g is not None:  # None: the loss does not depend on this call
                _write(m, name, a, g, offsets, out, written)
    for n, (s, k) in offsets.items():
        if n not in written:
            out[:, s:s + k].zero_()
    return out


def _write(m: nn.Module, name: str, a: torch.Tensor, g: torch.Tensor, offsets: dict[str, tuple[int, int]],
           out: torch.Tensor, written: set[str]) -> None:
    """Write (or add, for a second call of the same module) its per-sample gradients into ``out``."""
    b = len(a)
    prefix = f"{name}." if name else ""
    w_name = prefix + "weight"
    if isinstance(m, nn.Linear) and a.dim() == 2 and w_name in offsets and w_name not in written:
        s, k = offsets[w_name]  # the outer product straight into the rows (no [b, out, in] temporary)
        torch.mul(g.unsqueeze(2), a.unsqueeze(1), out=out[:, s:s + k].view(b, *m.weight.shape))
        written.add(w_name)
        grads = {"bias": g}
    else:
        grads = _layer_grads(m, a, g, want_weight=w_name in offsets)
    for leaf, grad in grads.items():
        full = prefix + leaf
        if full not in offsets:
            continue
        s, k = offsets[full]
        block = out[:, s:s + k]
        if full in written:
            block.add_(grad.reshape(b, k))
        else:
            block.copy_(grad.reshape(b, k))
            written.add(full)
