"""K-FAC (Martens & Grosse 2015; George et al. 2018 for EK-FAC; Grosse et al. 2023 for influence)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from precompute.errors import ConfigError
from precompute.influence._common import layer_scores
from precompute.influence._kron import KronLayer, capture, find_layers
from precompute.influence._kron_projected import ProjectedKron, kron_compressor, projected_mode
from precompute.influence.base import (
    AUTO_DAMPING_SCALE,
    Capabilities,
    InfluenceEstimator,
    InfluenceTask,
    MethodConfig,
)

FISHERS = ("auto", "sampled", "ggn", "empirical")
#: ``fisher = "auto"``: the exact GGN when the model has at most this many outputs (C backward passes per
#: batch are then cheap and remove the label-sampling noise), else the one-backward sampled estimate
GGN_MAX_CLASSES = 16


@dataclass
class KFACConfig(MethodConfig):
    """``fisher``: ``"auto"`` (the default: ``"ggn"`` for at most GGN_MAX_CLASSES = 16 classes, else
    ``"sampled"``), ``"sampled"`` (labels drawn from the model's predictive distribution: an unbiased
    estimate of the GGN / true Fisher with 1 backward pass per batch), ``"ggn"`` (the exact expectation
    over all C classes, C backward passes) or ``"empirical"`` (the true labels, 1 backward pass);
    ``seed``: the label draws of ``"sampled"``; ``batch_size``: training samples per factor-fitting
    batch (None = the run's); ``replay_mb``: EK-FAC keeps the first pass's activations and output
    gradients in memory up to this size and refits the eigenvalues from them instead of a second
    pass over the data (0 = always recompute)."""

    fisher: str = "auto"
    seed: int = 0
    batch_size: int | None = None
    replay_mb: int = 512

    def validate(self) -> KFACConfig:
        super().validate()
        if self.fisher not in FISHERS:
            raise ConfigError(f"influence.options.kfac.fisher: must be one of {', '.join(FISHERS)} (got {self.fisher!r})")
        if not isinstance(self.seed, int):
            raise ConfigError(f"influence.options.kfac.seed: must be an integer (got {self.seed!r})")
        if not isinstance(self.replay_mb, int) or self.replay_mb < 0:
            raise ConfigError(f"influence.options.kfac.replay_mb: must be an integer >= 0 (got {self.replay_mb!r})")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"influence.options.kfac.batch_size: must be an integer >= 1 or omitted "
                              f"(got {self.batch_size!r})")
        return self


@dataclass
class KronFactors:
    """Fitted curvature of one layer: ``A [in', in']``, ``S [out, out]``, their eigenbases, and the
    eigenvalue grid ``eig [out, in']`` used in the preconditioner (K-FAC: outer(ls, la); EK-FAC: refit)."""

    layer: KronLayer
    A: torch.Tensor
    S: torch.Tensor
    qa: torch.Tensor
    la: torch.Tensor
    qs: torch.Tensor
    ls: torch.Tensor
    eig: torch.Tensor

    def rotation(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(qs, qa, eig)`` in ``dtype`` (cached per dtype; float32 models precondition in float32)."""
        cache = self.__dict__.setdefault("_cast", {})
        key = (dtype, id(self.eig))  # the EK-FAC refit replaces eig after the first cast
        if key not in cache:
            cache[key] = (self.qs.to(dtype), self.qa.to(dtype), self.eig.to(dtype))
        return cache[key]


class _KroneckerEstimator(InfluenceEstimator):
    """Shared fit and preconditioning of K-FAC and EK-FAC (block-diagonal over layers)."""

    config_class = KFACConfig
    capabilities = Capabilities(damping="hessian", per_layer=True, compressed_store=True, exact_spearman=0.7)
    refit_eigenvalues: ClassVar[bool] = False

    def damping_for(self, task: InfluenceTask) -> float:
        """A number as is; ``"auto"`` is per layer (:meth:`layer_dampings`): the mean of the fitted layers'
        lambdas is returned for the record (NaN before ``fit``)."""
        raw = self.raw_damping(task)
        if raw != "auto":
            return float(raw)
        lams = getattr(self, "lams_", None)
        return float(sum(lams) / len(lams)) if lams else float("nan")

    def layer_dampings(self, task: InfluenceTask) -> list[float]:
        """lambda per layer: ``"auto"`` = AUTO_DAMPING_SCALE (0.1) x the mean of that layer's own eigenvalue
        grid ``eig`` (K-FAC: outer(ls, la); EK-FAC: the refitted eigenvalues), kronfluence's heuristic, so
        each block is damped on its own scale; a number is used for every layer."""
        raw = self.raw_damping(task)
        if raw != "auto":
            return [float(raw)] * len(self.factors_)
        return [AUTO_DAMPING_SCALE * float(f.eig.mean()) for f in self.factors_]

    def _resolve_fisher(self, task: InfluenceTask) -> str:
        """``"auto"`` -> ``"ggn"`` for at most GGN_MAX_CLASSES model outputs, else ``"sampled"`` (measured:
        the exact GGN gives a higher LDS on the digits samples; docs/methods.md)."""
        if self.config.fisher != "auto":
            return self.config.fisher
        with torch.no_grad():
            n_classes = task.model(task.x_train[:1]).shape[1]
        return "ggn" if n_classes <= GGN_MAX_CLASSES else "sampled"

    def fit(self, task: InfluenceTask) -> _KroneckerEstimator:
        super().fit(task)
        self.projected_ = None
        if projected_mode(task):
            return self._fit_projected(task)
        layers = find_layers(task, self.name)
        bs = self.config.batch_size or task.batch_size
        n = task.n_train
        kw = {"dtype": torch.float64, "device": task.x_train.device}
        a_sum = [torch.zeros(lay.n_in, lay.n_in, **kw) for lay in layers]
        s_sum = [torch.zeros(lay.n_out, lay.n_out, **kw) for lay in layers]
        positions = [0] * len(layers)
        replay: list[tuple[list[torch.Tensor], list[torch.Tensor], bool]] | None = (
            [] if self.refit_eigenvalues and self.config.replay_mb > 0 else None)
        replay_bytes = 0

        def accumulate(acts: list[torch.Tensor], grads: list[torch.Tensor], first: bool) -> None:
            nonlocal replay, replay_bytes
            if replay is not None:  # keep this batch for the eigenvalue refit while it fits the budget
                replay_bytes += sum(t.numel() * t.element_size() for t in (*grads, *(acts if first else ())))
                if replay_bytes > self.config.replay_mb * 2**20:
                    replay = None
                else:
                    replay.append((acts, grads, first))
            for k, (a, g) in enumerate(zip(acts, grads, strict=True)):
                if first:  # activations are shared by the C cotangents of one batch
                    a_sum[k] += torch.einsum("bli,blj->ij", a, a).to(torch.float64)
                    positions[k] += a.shape[0] * a.shape[1]
                s_sum[k] += torch.einsum("blo,blq->oq", g, g).to(torch.float64)

        self.fisher_ = self._resolve_fisher(task)
        capture(task, layers, self.fisher_, bs, accumulate, self.config.seed)
        counts = torch.tensor(positions, **kw)  # a torchrun launch: every rank ends with the same sums
        task.all_reduce_sum_([*a_sum, *s_sum, counts])
        positions = [int(c) for c in counts.tolist()]
        self.factors_: list[KronFactors] = []
        for k, lay in enumerate(layers):
            A, S = a_sum[k] / positions[k], s_sum[k] / n  # A: mean over samples and positions; S: sum over positions
            la, qa = torch.linalg.eigh(A)
            ls, qs = torch.linalg.eigh(S)
            la, ls = la.clamp_min(0), ls.clamp_min(0)
            self.factors_.append(KronFactors(lay, A, S, qa, la, qs, ls, torch.outer(ls, la)))
        self.replayed_ = replay is not None
        if self.refit_eigenvalues:
            self._refit(task, layers, bs, replay)
        self.lams_ = self.layer_dampings(task)
        self.lam_ = self.damping_for(task)
        return self

    def _refit(self, task: InfluenceTask, layers: list[KronLayer], bs: int,
               replay: list[tuple[list[torch.Tensor], list[torch.Tensor], bool]] | None) -> None:
        """EK-FAC: eig[o, a] = (1/n) sum_i sum_c ((Q_S^T G_ic Q_A)[o, a])^2, G_ic the per-sample gradient
        (from the first pass's kept batches when they fitted ``replay_mb``, else a second pass)."""
        diag = [torch.zeros(lay.n_out, lay.n_in, dtype=torch.float64, device=task.x_train.device) for lay in layers]

        def accumulate(acts: list[torch.Tensor], grads: list[torch.Tensor], _first: bool) -> None:
            for k, (a, g) in enumerate(zip(acts, grads, strict=True)):
                qs, qa, _ = self.factors_[k].rotation(g.dtype)
                gr, ar = g @ qs, a @ qa  # rotated output gradients / activations
                if a.shape[1] == 1:  # one position: (Q_S^T g a^T Q_A)^2 = outer(gr^2, ar^2)
                    diag[k] += ((gr[:, 0] ** 2).T @ (ar[:, 0] ** 2)).to(torch.float64)
                else:
                    rot = torch.bmm(gr.transpose(1, 2), ar)  # Q_S^T G Q_A per sample, [b, out, in']
                    diag[k] += (rot * rot).sum(0).to(torch.float64)

        if replay is not None:
            for acts, grads, first in replay:
                accumulate(acts, grads, first)
        else:
            capture(task, layers, self.fisher_, bs, accumulate, self.config.seed)
        task.all_reduce_sum_(diag)
        for f, d in zip(self.factors_, diag, strict=True):
            f.eig = d / task.n_train

    def _fit_projected(self, task: InfluenceTask) -> _KroneckerEstimator:
        """The run compresses gradients (n x p does not fit): factors in the compressed per-layer space
        (:mod:`precompute.influence._kron_projected`); ``fisher = "auto"`` is the sampled Fisher there
        (the GGN would cost one compressed-gradient pass per class)."""
        raw = self.raw_damping(task)
        self.fisher_ = "sampled" if self.config.fisher == "auto" else self.config.fisher
        self.compressor_ = kron_compressor(task)
        bs = self.config.batch_size or task.batch_size
        self.projected_ = ProjectedKron(self.compressor_).fit(
            task, self.fisher_, self.config.seed, bs, self.refit_eigenvalues,
            None if raw == "auto" else float(raw), task.weight_decay)
        self.lams_ = [b.shift - task.weight_decay for b in self.projected_.blocks]
        self.lam_ = self.damping_for(task)
        self.factors_ = []
        return self

    def precondition(self, g: torch.Tensor) -> torch.Tensor:
        """``[b, p] -> [b, p]``: per layer l, Q (diag(eig) + (weight_decay + lambda_l) I)^-1 Q^T g, Q = Q_A (x) Q_S.

        Runs in ``g``'s dtype (the factors are kept in float64 and cast once per dtype)."""
        task = self._require_fit()
        out = torch.empty_like(g)
        for f, lam in zip(self.factors_, self.lams_, strict=True):
            qs, qa, eig = f.rotation(g.dtype)
            rot = qs.T @ f.layer.to_matrix(g) @ qa / (eig + (task.weight_decay + lam))
            f.layer.put_matrix(qs @ rot @ qa.T, out)
        return out

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self._require_fit()
        if self.projected_ is not None:  # compressed per-sample gradients [b, k]
            return self.compressor_.compress(task.model, x, y, loss_fn=task.loss_fn)
        return task.gradients(x, y)

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.projected_ is not None:
            return self.projected_.precondition(self.train_factors(x, y))
        return self.precondition(self._require_fit().gradients(x, y))

    def self_influence(self, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor | None = None) -> torch.Tensor:
        """g_i^T P g_i from the stored train factors (the query side is the same gradient, preconditioned)."""
        t = self.train_factors(x, y) if train is None else train
        q = self.projected_.precondition(t) if self.projected_ is not None else self.precondition(t)
        return (q * t).sum(dim=1)

    def layer_scores(self, query: torch.Tensor, train: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{layer: [b_test, b_train]}``; they sum to ``scores(query, train)``."""
        return layer_scores(self._require_fit().space.layer_slices(), query, train)

    def fit_info(self) -> dict[str, Any]:
        if self.projected_ is not None:
            info = self.projected_.info()
            del info["layer_shift"]  # weight decay + lambda; the lambdas alone are recorded below
            return {"damping": self.lam_, "layer_damping": dict(zip(info["layers"], self.lams_, strict=True)),
                    "fisher": self.fisher_, "passes": 2 if self.refit_eigenvalues else 1, **info}
        passes = 2 if self.refit_eigenvalues and not self.replayed_ else 1
        return {"damping": self.lam_, "layer_damping": dict(zip((f.layer.name for f in self.factors_), self.lams_,
                                                                strict=True)),
                "fisher": self.fisher_, "passes": passes,
                "layers": [f.layer.name for f in self.factors_],
                "eigenvalue_max": max(float(f.eig.max()) for f in self.factors_),
                "eigenvalue_mean": float(torch.cat([f.eig.flatten() for f in self.factors_]).mean())}


class KFAC(_KroneckerEstimator):
    """score(t, i) = sum_layers g_t^T (A (x) S + (wd + lambda) I)^-1 g_i, per Linear/Conv2d layer.

    A = E[a a^T] (layer inputs with a 1 appended for the bias; Conv2d: unfold patches, averaged over
    positions), S = E[sum_positions d d^T] (output gradients under the Fisher: sampled labels by
    default). Inverse via the eigendecompositions of A and S: fit is one forward + backward pass over
    the training set (C backwards for ``fisher="ggn"``) plus O(in^3 + out^3) per layer, then a query
    costs one gradient and two small matmuls per layer.
    Cheapest curvature-aware method; ignores cross-layer curvature and the non-GGN Hessian term.
    """

    name = "kfac"
    summary = "K-FAC: per-layer Kronecker-factored GGN"


class EKFAC(_KroneckerEstimator):
    """K-FAC with the eigenvalues refitted in the Kronecker eigenbasis (George et al. 2018).

    eig[o, a] = E[((Q_S^T G Q_A)[o, a])^2]: the exact diagonal of the GGN expressed in the basis
    Q_A (x) Q_S, which is the best diagonal there (Frobenius); damping as in K-FAC. The refit replays
    the fitting pass from memory (``replay_mb``; else a second pass), so it costs about what K-FAC
    does. The default Kronecker method (Grosse et al. 2023).
    """

    name = "ekfac"
    summary = "EK-FAC: K-FAC with eigenvalues refitted in the Kronecker eigenbasis"
    refit_eigenvalues = True
