"""Ritz pairs of a symmetric operator by Arnoldi (= Lanczos with full re-orthogonalisation).

Kept free of the estimator modules (torch only) so that ``base.auto_damping`` can use it without an
import cycle; ``precompute.influence.arnoldi`` re-exports it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def arnoldi_eigs(matvec: Callable[[torch.Tensor], torch.Tensor], p: int, n_iter: int, seed: int = 0,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz pairs of a symmetric operator from ``n_iter`` Arnoldi steps: ``(evals [m], evecs [p, m])``.

    Full re-orthogonalisation (twice) keeps the basis orthonormal in float64; on breakdown (an
    invariant subspace) the iteration restarts from a fresh random vector orthogonal to the basis.
    """
    gen = torch.Generator().manual_seed(seed)
    m = min(n_iter, p)
    q = torch.zeros(m, p, dtype=torch.float64, device=device)
    h = torch.zeros(m, m, dtype=torch.float64, device=device)
    v = torch.randn(p, generator=gen, dtype=torch.float64).to(device)
    q[0] = v / v.norm()
    for j in range(m):
        w = matvec(q[j:j + 1])[0]
        for _ in range(2):
            c = q[:j + 1] @ w
            h[:j + 1, j] += c
            w = w - c @ q[:j + 1]
        if j + 1 == m:
            break
        nrm = w.norm()
        if nrm > 1e-10 * h[:j + 1, j].abs().max().clamp_min(1e-300):
            h[j + 1, j] = nrm
            q[j + 1] = w / nrm
        else:  # invariant subspace found: continue from a random direction orthogonal to the basis
            r = torch.randn(p, generator=gen, dtype=torch.float64).to(device)
            for _ in range(2):
                r = r - (q[:j + 1] @ r) @ q[:j + 1]
            q[j + 1] = r / r.norm()
    evals, vecs = torch.linalg.eigh(0.5 * (h + h.T))
    return evals, q.T @ vecs
