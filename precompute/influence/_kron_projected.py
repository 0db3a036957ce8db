"""K-FAC / EK-FAC in the compressed per-layer space (LogIX-style), for models whose ``[n, p]`` gradients
do not fit: the train side is the compressed gradient store, the preconditioner lives in ``k`` dims.

For a factored/dropout layer the compressed per-sample gradient is ``C = s * D @ A^T``-style block
``[k_out, k_in]`` with ``A [L, k_in]`` the projected activations and ``D [k_out, L]`` the projected
output gradients (see :mod:`precompute.compression._layers`). The Kronecker factors are fitted there:

    A' = E_i[ mean_positions a a^T ]   [k_in, k_in]      S' = s^2 E_i[ sum_positions d d^T ]   [k_out, k_out]

exactly as K-FAC fits ``A`` and ``S`` in parameter space, but on ``P_in^T a`` and ``P_out^T d``
(the Fisher of the projected gradients is then approximated by ``A' (x) S'``). EK-FAC refits the
eigenvalues on the compressed blocks themselves: ``eig[o, a] = E_i sum_c ((Q_S'^T C_ic Q_A')[o, a])^2``.
Dense/identity groups (small layers, projected densely) get their exact block covariance
``E[c c^T]`` (``[k_g, k_g]``; diagonal above :data:`FULL_BLOCK_MAX` columns).

The Fisher cotangents (sampled labels, GGN, empirical) are the same draws as the parameter-space
fit (:func:`~precompute.influence._kron.output_cotangents`, same seed and batch order). Cost: one
compressed-gradient pass over the training set for K-FAC, two for EK-FAC; memory O(b k + sum k_l^2).
Damping ``"auto"`` is per layer: 0.1 x the mean of that layer's eigenvalues (kronfluence's heuristic).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from precompute.influence._kron import batch_generator, output_cotangents

#: dense/identity groups up to this many compressed columns get a full covariance, above it a diagonal
FULL_BLOCK_MAX = 4096
#: damping "auto" in the projected space: this fraction of each layer's mean eigenvalue
AUTO_LAYER_SCALE = 0.1


def projected_mode(task: Any) -> bool:
    """Whether K-FAC/EK-FAC fit in the compressed space: the run has a compressor that compresses."""
    comp = getattr(task, "compressor", None)
    return comp is not None and comp.config.kind != "none"


def kron_compressor(task: Any) -> Any:
    """The run's compressor with every Linear/Conv2d on the factored path (``dense_below = 0``), so each
    layer keeps its Kronecker structure (small layers are otherwise projected densely)."""
    from precompute.compression import GradientCompressor

    comp = task.compressor
    if comp.config.dense_below == 0:
        return comp
    cfg = dataclasses.replace(comp.config, dense_below=0)
    out = GradientCompressor.create(cfg, task.model, task.space, task.x_train[:2])
    out.max_batch = comp.max_batch
    return out


@dataclass
class _Block:
    """Curvature of one compressed group: Kronecker (``qs [k_out, k_out]``, ``qa [k_in, k_in]``,
    ``eig [k_out, k_in]``) or a dense eigenbasis (``q [k, k]`` or None for diagonal, ``eig [k]``)."""

    name: str
    cols: slice
    kron: bool
    k_out: int = 0
    k_in: int = 0
    a_sum: torch.Tensor | None = None
    s_sum: torch.Tensor | None = None
    positions: int = 0
    qs: torch.Tensor | None = None
    qa: torch.Tensor | None = None
    q: torch.Tensor | None = None
    eig: torch.Tensor | None = None
    shift: float = 0.0
    cast: dict[Any, tuple] = field(default_factory=dict)


class ProjectedKron:
    """The fitted preconditioner over a :class:`~precompute.compression.GradientCompressor`'s columns."""

    def __init__(self, compressor: Any):
        self.compressor = compressor
        self.blocks: list[_Block] = []
        for g in compressor.groups:
            kron = g.path == "hooks"
            self.blocks.append(_Block(g.name, g.cols, kron, g.k_out if kron else 0, g.k_in if kron else 0))
        self.by_name = {b.name: b for b in self.blocks}

    # ------------------------------------------------------------------ fitting
    def fit(self, task: Any, fisher: str, seed: int, batch_size: int, refit: bool, damping: float | None,
            weight_decay: float) -> ProjectedKron:
        """Fit from compressed Fisher pseudo-gradients of ``task``'s training set (``damping=None``: auto)."""
        kw = {"dtype": torch.float64, "device": task.x_train.device}
        for b in self.blocks:
            if b.kron:
                b.a_sum, b.s_sum = torch.zeros(b.k_in, b.k_in, **kw), torch.zeros(b.k_out, b.k_out, **kw)
            else:
                k = b.cols.stop - b.cols.start
                b.s_sum = torch.zeros(k, k, **kw) if k <= FULL_BLOCK_MAX else torch.zeros(k, **kw)
        first_of_batch = [True]

        def on_layer(g: Any, a: torch.Tensor, d: torch.Tensor, scale: float) -> None:
            b = self.by_name[g.name]
            if first_of_batch[0]:  # activations are the same for every cotangent of a batch
                b.a_sum += torch.einsum("bli,blj->ij", a, a).to(torch.float64)
                b.positions += a.shape[0] * a.shape[1]
            b.s_sum += (scale * scale) * torch.einsum("bol,bql->oq", d, d).to(torch.float64)

        def on_rows(c: torch.Tensor) -> None:
            for b in self.blocks:
                if not b.kron:
                    v = c[:, b.cols].to(torch.float64)
                    b.s_sum += v.T @ v if b.s_sum.dim() == 2 else (v * v).sum(0)

        self._passes(task, fisher, seed, batch_size, on_layer, on_rows, first_of_batch)
        kron = [b for b in self.blocks if b.kron]
        counts = torch.tensor([float(b.positions) for b in kron], **kw)
        task.all_reduce_sum_([*(t for b in kron for t in (b.a_sum, b.s_sum)),
                              *(b.s_sum for b in self.blocks if not b.kron), counts])
        for b, c in zip(kron, counts.tolist(), strict=True):
            b.positions = int(c)
        n = task.n_train
        for b in self.blocks:
            if b.kron:
                la, b.qa = torch.linalg.eigh(b.a_sum / max(b.positions, 1))
                ls, b.qs = torch.linalg.eigh(b.s_sum / n)
                b.eig = torch.outer(ls.clamp_min(0), la.clamp_min(0))
                b.a_sum = b.s_sum = None
            elif b.s_sum.dim() == 2:
                lam, b.q = torch.linalg.eigh(b.s_sum / n)
                b.eig, b.s_sum = lam.clamp_min(0), None
            else:
                b.eig, b.s_sum = b.s_sum / n, None
        if refit:
            self._refit(task, fisher, seed, batch_size)
        for b in self.blocks:
            lam = AUTO_LAYER_SCALE * float(b.eig.mean()) if damping is None else damping
            b.shift = weight_decay + lam
        return self

    def _refit(self, task: Any, fisher: str, seed: int, batch_size: int) -> None:
        """EK-FAC: the Kronecker blocks' eigenvalues from the compressed blocks in their eigenbasis."""
        diag = {b.name: torch.zeros_like(b.eig) for b in self.blocks if b.kron}

        def on_rows(c: torch.Tensor) -> None:
            for b in self.blocks:
                if b.kron:
                    blk = c[:, b.cols].to(torch.float64).reshape(len(c), b.k_out, b.k_in)
                    rot = b.qs.T @ blk @ b.qa
                    diag[b.name] += (rot * rot).sum(0)

        self._passes(task, fisher, seed, batch_size, None, on_rows, [False])
        task.all_reduce_sum_(list(diag.values()))
        for b in self.blocks:
            if b.kron:
                b.eig = diag[b.name] / task.n_train

    def _passes(self, task: Any, fisher: str, seed: int, batch_size: int, on_layer: Any, on_rows: Any,
                first_of_batch: list[bool]) -> None:
        """One pass over the training set: per batch and Fisher cotangent v ``[b, C]``, the compressed
        pseudo-gradients ``J^T v`` (loss ``<logits, v>``) go to ``on_rows`` and the layer sides to ``on_layer``."""
        model, comp = task.model, self.compressor
        for s in task.fit_batch_starts(batch_size):
            x, y = task.x_train[s:s + batch_size], task.y_train[s:s + batch_size]
            generator = batch_generator(seed, s)
            with torch.no_grad():
                logits = model(x)
            idx = torch.arange(len(x), device=x.device)
            for j, v in enumerate(output_cotangents(logits, y, fisher, generator)):
                first_of_batch[0] = j == 0
                cot = v.detach()

                def loss(out: torch.Tensor, i: torch.Tensor, cot: torch.Tensor = cot) -> torch.Tensor:
                    return (out * cot[i]).sum(-1)

                rows = comp.compress(model, x, idx, loss_fn=loss, on_layer=on_layer)
                on_rows(rows)

    # ------------------------------------------------------------------ use
    def precondition(self, c: torch.Tensor) -> torch.Tensor:
        """Compressed gradients ``[b, k] -> [b, k]``: per group ``Q (eig + shift)^-1 Q^T c``."""
        out = torch.empty_like(c)
        for b in self.blocks:
            key = c.dtype
            if key not in b.cast:
                b.cast[key] = tuple(None if t is None else t.to(device=c.device, dtype=c.dtype)
                                    for t in (b.qs, b.qa, b.q, b.eig))
            qs, qa, q, eig = b.cast[key]
            v = c[:, b.cols]
            if b.kron:
                blk = v.reshape(len(c), b.k_out, b.k_in)
                rot = qs.T @ blk @ qa / (eig + b.shift)
                out[:, b.cols] = (qs @ rot @ qa.T).reshape(len(c), -1)
            elif q is not None:
                out[:, b.cols] = ((v @ q) / (eig + b.shift)) @ q.T
            else:
                out[:, b.cols] = v / (eig + b.shift)
        return out

    def info(self) -> dict[str, Any]:
        """Manifest facts: the space, eigenvalue range and the per-layer shifts (weight decay + lambda)."""
        eig = torch.cat([b.eig.flatten() for b in self.blocks])
        return {"space": "compressed", "k": self.compressor.dim, "layers": [b.name for b in self.blocks],
                "eigenvalue_max": float(eig.max()), "eigenvalue_mean": float(eig.mean()),
                "layer_shift": {b.name: b.shift for b in self.blocks}}
