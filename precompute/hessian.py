"""The training objective, its Hessian-vector products, and the explicit Hessian.

Objective over the selected parameters theta (others frozen):
``J(theta) = (1/n) sum_i loss_i(theta) + weight_decay / 2 * ||theta||^2``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from precompute.gradients import LossFn, cross_entropy_loss
from precompute.params import ParamSpace


def create_batch_objective_function(model: nn.Module, space: ParamSpace, loss_fn: LossFn = cross_entropy_loss):
    """``f(theta_flat [p], x [b, ...], y [b]) -> sum of losses over the batch`` (a scalar)."""
    frozen = space.frozen(model)

    def objective(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, {**frozen, **space.unflatten(theta)}, (x,))
        return loss_fn(logits, y).sum()

    return objective


#: activation floats one vmapped HVP call may touch (vectors x samples x activations per sample); sized
#: from the digits MLP/CNN on 2 CPU cores, where per-vector cost is lowest at 8-16 M (cache-resident)
HVP_WORK_BUDGET = 12_000_000


def activation_size(model: nn.Module, x1: torch.Tensor) -> int:
    """Number of activation values one sample produces: the summed output sizes of the leaf modules
    (the model's output if it has none), for ``x1 [1, *input]``."""
    leaves = [m for m in model.modules() if next(m.children(), None) is None] or [model]
    total = 0

    def count(_m, _args, out):
        nonlocal total
        total += sum(t.numel() for t in (out if isinstance(out, tuple | list) else (out,)) if isinstance(t, torch.Tensor))

    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in handles:
            h.remove()
    return max(total, 1)


#: at most this many vectors take the reverse-over-reverse HVP in ``mode="auto"`` (``vjp`` of ``grad``: one
#: forward + backward with the graph kept, then one backward per vector); more take forward-over-reverse.
#: ``bench/bench_hvp.py``, 1 thread: reverse / forward time 0.21-0.23 (k = 1) and 0.70-0.85 (k = 32) on the
#: digits MLP, 0.62-0.65 (k = 1) and 0.90 (k = 32) on the digits CNN; still 0.86-0.90 at k = 128-360 on the
#: MLP, but the many-vector callers (block CG, LiSSA, the explicit Hessian) keep forward mode until measured
REVERSE_HVP_MAX_VECTORS = 32


def create_hvp_function(
    model: nn.Module,
    space: ParamSpace,
    x: torch.Tensor,
    y: torch.Tensor,
    weight_decay: float,
    batch_size: int = 512,
    theta: torch.Tensor | None = None,
    loss_fn: LossFn = cross_entropy_loss,
    mode: str = "auto",
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``hvp(V [k, p]) -> H V [k, p]`` for the Hessian H of the full training objective J at ``theta``.

    Two ways to the same product (equal up to float rounding), chosen per call by ``mode``:

    * forward-over-reverse (``"forward"``; ``jvp`` of ``grad``), vmapped over the vectors. The k vectors
      go through in chunks sized so that chunk x batch x activations per sample stays near
      ``HVP_WORK_BUDGET`` (one vmapped call over all of them thrashes the cache: 2x slower on the digits
      CNN, and its peak memory grows with k); fewer vectors than a chunk take more data rows per pass
      instead (up to the same budget), so a single vector is one pass on the digits models.
    * reverse-over-reverse (``"reverse"``; ``vjp`` of ``grad``): per row block one forward + backward
      that keeps its graph, then one more backward per vector (vmapped over them). When all rows fit in
      one block (n x activations per sample <= the budget), that linearisation is made on the first
      call and kept for later ones, so each further HVP is only the second backward (its memory: the
      graph of those n rows, within the same budget as one forward-over-reverse call).

    ``"auto"``: reverse for at most ``REVERSE_HVP_MAX_VECTORS`` vectors (Arnoldi, Lanczos, the power
    iteration: one at a time), forward for more (block CG, LiSSA's test batch, the explicit Hessian).
    Digits MLP, 1 thread, one vector: 3.9-4.3 ms forward, 0.9-1.0 ms reverse with the kept graph (its
    first call, which builds the graph, 3.2-3.6 ms).
    """
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"create_hvp_function: mode must be 'auto', 'forward' or 'reverse' (got {mode!r})")
    objective = create_batch_objective_function(model, space, loss_fn)
    theta0 = space.flatten(space.params(model)) if theta is None else theta
    n = len(x)
    g = grad(objective)

    def batch_hvp(v: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return jvp(lambda t: g(t, xb, yb), (theta0,), (v,))[1]

    multi = vmap(batch_hvp, in_dims=(0, None, None))
    act = activation_size(model, x[:1])
    chunk = max(1, HVP_WORK_BUDGET // (min(batch_size, max(n, 1)) * act))
    linearized: list = []  # the kept vjp of grad over all rows (reverse mode, one row block)
    vmapped = [True]  # reverse mode vmaps its second backward until an op refuses (then one by one)

    # reverse mode: row blocks as for one forward-over-reverse vector (the same for every k, so one kept
    # graph serves all calls), the vectors through each block's backward in chunks within the budget
    rev_rows = min(max(n, 1), max(batch_size, HVP_WORK_BUDGET // act))
    rev_chunk = max(1, HVP_WORK_BUDGET // (rev_rows * act))

    def reverse(vv: torch.Tensor) -> torch.Tensor:
        out = weight_decay * vv.clone()
        for s in range(0, n, rev_rows):
            if linearized:
                back = linearized[0]
            else:
                back = vjp(lambda t, s=s: g(t, x[s:s + rev_rows], y[s:s + rev_rows]), theta0)[1]
                if rev_rows >= n:
                    linearized.append(back)
            for c in range(0, len(vv), rev_chunk):
                out[c:c + rev_chunk] += _backward_each(back, vv[c:c + rev_chunk], vmapped) / n
        return out

    def hvp(v: torch.Tensor) -> torch.Tensor:
        squeeze = v.dim() == 1
        vv = v.unsqueeze(0) if squeeze else v
        if mode == "reverse" or (mode == "auto" and len(vv) <= REVERSE_HVP_MAX_VECTORS):
            out = reverse(vv)
            return out.squeeze(0) if squeeze else out
        out = weight_decay * vv.clone()
        rows = batch_size
        if len(vv) < chunk:  # few vectors (Arnoldi, Lanczos, one CG block): more rows per call, fewer calls;
            # on small models the per-call overhead is the cost (digits MLP, one vector: 5.2 -> 2.3 ms)
            rows = min(max(n, 1), max(batch_size, HVP_WORK_BUDGET // (len(vv) * act)))
        for c in range(0, len(vv), chunk):
            for s in range(0, n, rows):
                out[c:c + chunk] += multi(vv[c:c + chunk], x[s:s + rows], y[s:s + rows]) / n
        return out.squeeze(0) if squeeze else out

    return hvp


def _backward_each(back: Callable, part: torch.Tensor, vmapped: list[bool]) -> torch.Tensor:
    """``back(v)`` for each row of ``part [k, p]``: vmapped, or one at a time where vmap cannot batch the
    backward (the digits CNN's float32 conv/pool backward: "NYI: querying is_contiguous inside of vmap";
    remembered in ``vmapped[0]``)."""
    if len(part) > 1 and vmapped[0]:
        try:
            return vmap(back)(part)[0]
        except RuntimeError:
            vmapped[0] = False
    return torch.stack([back(v)[0] for v in part])


def explicit_hessian(hvp: Callable[[torch.Tensor], torch.Tensor], p: int, dtype: torch.dtype,
                     device: torch.device | str = "cpu", chunk: int = 128,
                     progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Form H ``[p, p]`` column block by column block from HVPs with identity columns; symmetrised."""
    H = torch.empty(p, p, dtype=dtype, device=device)
    eye = torch.eye(p, dtype=dtype, device=device)
    for s in range(0, p, chunk):
        H[s:s + chunk] = hvp(eye[s:s + chunk])
        if progress:
            progress(min(chunk, p - s))
    return 0.5 * (H + H.T)


def sequential_stages(model: nn.Module, space: ParamSpace) -> list[tuple[int, list[str]]] | None:
    """``[(child index j, the space's parameter names in child j)]`` in order, for an ``nn.Sequential``
    whose selected parameters all sit in top-level children that share no parameter; else None."""
    if not isinstance(model, nn.Sequential):
        return None
    index = {key: j for j, key in enumerate(model._modules)}
    owner: dict[str, int] = {}
    for name in space.names:
        head, _, rest = name.partition(".")
        if not rest or head not in index:
            return None
        owner[name] = index[head]
    seen: dict[int, int] = {}
    for j, child in enumerate(model):
        for prm in child.parameters():
            if seen.setdefault(id(prm), j) != j:  # one parameter in two children: not a chain of stages
                return None
    return [(j, [n for n in space.names if owner[n] == j]) for j in sorted(set(owner.values()))]


def staged_hessian(model: nn.Sequential, space: ParamSpace, x: torch.Tensor, y: torch.Tensor, weight_decay: float,
                   batch_size: int = 512, loss_fn: LossFn = cross_entropy_loss,
                   progress: Callable[[int], None] | None = None) -> torch.Tensor | None:
    """The explicit Hessian ``[p, p]`` of J (as :func:`explicit_hessian` of :func:`create_hvp_function`,
    model dtype, symmetrised), column block by stage of an ``nn.Sequential``; None when the model has no
    such stages (:func:`sequential_stages`) or only one.

    Parameters of child j do not act on children before j, so their columns are needed only in the rows
    of children >= j (the rest follows by symmetry) and come from HVPs of the *suffix* ``model[j:]`` on
    the features ``model[:j](x)``. On the digits CNN only conv1's 80 columns go through the whole network,
    conv2's 1,168 start at its pooled 8x4x4 input and the head's 2,410 are HVPs of a small MLP: 12x faster
    than 3,658 whole-model HVPs (``bench/bench_staged_hessian.py``). Memory: H plus one stage's
    ``[columns, p]`` block.
    """
    stages = sequential_stages(model, space)
    if stages is None or len(stages) < 2:
        return None
    flat = dict(zip(space.names, _ranges(space), strict=True))
    dtype = next(model.parameters()).dtype
    H = torch.zeros(space.size, space.size, dtype=dtype, device=y.device)
    n = len(x)
    for i, (j, cols_names) in enumerate(stages):
        suffix, prefix = model[j:], model[:j]  # slices keep the children's names
        rows_names = [nm for stage in stages[i:] for nm in stage[1]]
        sub = ParamSpace(suffix, rows_names)
        theta = sub.flatten(sub.params(suffix))
        rows = torch.cat([flat[nm] for nm in rows_names]).to(y.device)
        cols = torch.cat([flat[nm] for nm in cols_names]).to(y.device)
        local_cols = torch.cat(_ranges(sub)[:len(cols_names)]).to(y.device)  # the stage's own names come first

        def objective(t: torch.Tensor, f: torch.Tensor, yb: torch.Tensor, suffix=suffix, sub=sub) -> torch.Tensor:
            return loss_fn(functional_call(suffix, sub.unflatten(t), (f,)), yb).sum()

        g = grad(objective)
        multi = vmap(lambda v, f, yb, g=g, theta=theta: jvp(lambda t: g(t, f, yb), (theta,), (v,))[1],
                     in_dims=(0, None, None))
        with torch.no_grad():
            feat1 = prefix(x[:1]) if j else x[:1]
        chunk = max(1, HVP_WORK_BUDGET // (min(batch_size, max(n, 1)) * activation_size(suffix, feat1)))
        block = torch.zeros(len(cols), sub.size, dtype=dtype, device=y.device)
        for s in range(0, n, batch_size):
            with torch.no_grad():
                f = prefix(x[s:s + batch_size]) if j else x[s:s + batch_size]
            yb = y[s:s + batch_size]
            for c in range(0, len(cols), chunk):
                k = min(chunk, len(cols) - c)
                v = torch.zeros(k, sub.size, dtype=dtype, device=y.device)
                v[torch.arange(k, device=y.device), local_cols[c:c + k]] = 1
                block[c:c + k] += multi(v, f, yb)
        block /= n
        H[rows[:, None], cols[None, :]] = block.T
        H[cols[:, None], rows[None, :]] = block
        if progress:
            progress(len(cols))
    H.diagonal().add_(weight_decay)
    return 0.5 * (H + H.T)


def objective_hessian(model: nn.Module, space: ParamSpace, x: torch.Tensor, y: torch.Tensor, weight_decay: float,
                      batch_size: int = 512, loss_fn: LossFn = cross_entropy_loss,
                      progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """H ``[p, p]`` float64 of J on ``(x, y)``: :func:`staged_hessian` when the model is a chain of stages,
    else :func:`explicit_hessian` from p whole-model HVPs."""
    H = staged_hessian(model, space, x, y, weight_decay, batch_size, loss_fn=loss_fn,  # type: ignore[arg-type]
                       progress=progress)  # None unless the model is a chain of stages
    if H is None:
        hvp = create_hvp_function(model, space, x, y, weight_decay, batch_size, loss_fn=loss_fn)
        H = explicit_hessian(hvp, space.size, dtype=next(model.parameters()).dtype, device=y.device,
                             progress=progress)
    return H.to(torch.float64)


def _ranges(space: ParamSpace) -> list[torch.Tensor]:
    """Each parameter's flat positions in ``space`` (``[numel]`` int64 per name, in order)."""
    out, start = [], 0
    for k in space.numels:
        out.append(torch.arange(start, start + k))
        start += k
    return out


def hessian_cost(model: nn.Module, space: ParamSpace, x1: torch.Tensor) -> float:
    """What forming H costs, in HVPs of the whole model: ``p`` without stages; with them, each stage's
    columns weighted by its suffix's activations per sample over the model's (``x1 [1, *input]``)."""
    stages = sequential_stages(model, space)
    if stages is None or len(stages) < 2:
        return float(space.size)
    assert isinstance(model, nn.Sequential)
    full = activation_size(model, x1)
    numel = dict(zip(space.names, space.numels, strict=True))
    cost = 0.0
    with torch.no_grad():
        for j, names in stages:
            feat = model[:j](x1) if j else x1
            cost += sum(numel[n] for n in names) * activation_size(model[j:], feat) / full
    return cost
