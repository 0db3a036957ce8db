"""Data value embedding (Wang et al. 2024, "Capturing the Temporal Dependence of Training Data
Influence"): trajectory-specific leave-one-out along the built-in trainer's recorded run."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call, grad, jvp, vmap

from precompute.errors import ConfigError, MethodError
from precompute.hessian import activation_size
from precompute.influence._common import as_model_dtype
from precompute.influence._dve_subspace import gradient_subspace, subspace_embeddings
from precompute.influence._rows import RowIndex
from precompute.influence.base import Capabilities, InfluenceEstimator, InfluenceTask, MethodConfig
from precompute.training import objective

#: up to this many n x p entries, one replay computes every row's embedding and keeps them (memory
#: bounded: 2^24 float64 = 128 MB); above it each train batch replays the trajectory for its own rows
CACHE_ELEMENTS = 1 << 24
#: the replayed trajectory must end within this relative distance of the task's model
REPLAY_RTOL = 1e-3
#: floats one vmapped tangent step may touch (rows x (batch x activations per sample + 8 P)); see ``_chunk``
TANGENT_WORK_BUDGET = 12_000_000
#: ``solver = "auto"`` runs the exact solver while its work, steps x rows x batch x activations per
#: sample, stays under this (the digits MLP's 9.4e9 took ~110 s on 2 cores), else the subspace solver,
#: whose ``rank = "auto"`` is this budget over steps x batch x activations, within ``AUTO_RANK``
WORK_BUDGET = 2e9
AUTO_RANK = (32, 256)
SOLVERS = ("auto", "exact", "subspace")
NEEDS = ("data_value_embedding: needs the built-in trainer's recorded trajectory (batches and learning rates "
         "per step of an sgd/adam run); {why}: train the model with `influence-explorer precompute` "
         "(train.optimizer = \"sgd\" or \"adam\") with data_value_embedding in influence.methods")


@dataclass
class DataValueEmbeddingConfig(MethodConfig):
    """``check_replay``: verify that replaying the recorded steps reproduces the task's model (within
    0.1%). ``solver``: ``"exact"`` propagates every row's tangent through every step (forward-mode AD);
    ``"subspace"`` computes the same embeddings exactly but seen through the top-``rank`` directions of
    the final training gradients (``_dve_subspace``; ``rank = "auto"``: from ``WORK_BUDGET``, 32-256;
    ``seed``: the subspace iteration's start); ``"auto"``: exact while its work is under
    ``WORK_BUDGET``, else subspace. ``damping`` is not used."""

    check_replay: bool = True
    solver: str = "auto"
    rank: int | str = "auto"
    seed: int = 0

    def validate(self) -> DataValueEmbeddingConfig:
        super().validate()
        where = "influence.options.data_value_embedding"
        if not isinstance(self.check_replay, bool):
            raise ConfigError(f"{where}.check_replay: must be true or false (got {self.check_replay!r})")
        if self.solver not in SOLVERS:
            raise ConfigError(f"{where}.solver: must be one of {', '.join(SOLVERS)} (got {self.solver!r})")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"{where}.seed: must be an integer (got {self.seed!r})")
        if self.rank != "auto" and (not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1):
            raise ConfigError(f"{where}.rank: must be \"auto\" or an integer >= 1 (got {self.rank!r})")
        return self


class DataValueEmbedding(InfluenceEstimator):
    """score(t, i) = g_t(theta_T) . e_i, e_i = d theta_T / d(-w_i): the first-order change of the final
    parameters when sample i's term is removed from every step it was in (its data value embedding).

    Along the recorded trajectory (batches B_k, rates eta_k, the objective
    ``(1/|B_k|) sum_{j in B_k} w_j L(z_j) + wd/2 |theta|^2`` with all w = 1), e_i is propagated exactly
    to first order through every later step: for plain SGD ``e <- (I - eta_k H_k) e + eta_k g_i / |B_k|``
    when i is in B_k; momentum and Adam states (m, v) are carried along in the same linearisation
    (forward-mode AD through the optimizer's update). So the score is the trajectory-specific LOO
    ``L_t(theta_T^{-i}) - L_t(theta_T)`` to first order (positive = proponent: removing i raises t's loss),
    capturing *when* a sample was seen: early samples' effects are damped by later steps.

    Cost: a replay of the T recorded steps per train batch of b rows, each step a Hessian-vector product
    of the step's batch for b tangents: O(T |B| b p) per batch, O(T |B| n p) in all (T = all steps of
    the run); memory O(b p) (when n p <= 2^24 one replay serves every row and keeps them, O(n p)). Needs the trajectory (built-in trainer, sgd/adam); the L2 term and the
    loss must be the task's. Use it to see how training order shaped influence, on small-to-mid models.
    """

    name = "data_value_embedding"
    config_class = DataValueEmbeddingConfig
    capabilities = Capabilities()
    summary = "data value embedding: trajectory-specific leave-one-out along the recorded SGD/Adam run"
    quick_options: dict[str, Any] = {}  # exact by construction: nothing to make cheaper on tiny models

    def fit(self, task: InfluenceTask) -> DataValueEmbedding:
        tr = task.trajectory
        if tr is None:
            raise MethodError(NEEDS.format(why="this model has none (a user checkpoint, an in-memory model, an lbfgs "
                                               "run, or a run built without this method: evaluate reads its scores "
                                               "from the run)"))
        if tr.optimizer not in ("sgd", "adam"):
            raise MethodError(NEEDS.format(why=f"the run's optimizer is {tr.optimizer!r}"))
        super().fit(task)
        self.names_ = [n for n, p in task.model.named_parameters() if p.requires_grad]
        missing = [n for n in task.space.names if n not in self.names_]
        if missing:
            raise MethodError(f"data_value_embedding: parameters {missing} were not trained")
        dev = task.x_train.device
        dtype = next(task.model.parameters()).dtype
        shapes = dict(task.model.named_parameters())
        self.shapes_ = [tuple(shapes[n].shape) for n in self.names_]
        self.numels_ = [shapes[n].numel() for n in self.names_]
        self.theta0_ = torch.cat([tr.initial_state[n].to(device=dev, dtype=dtype).reshape(-1) for n in self.names_])
        self.buffers_ = {n: b.detach() for n, b in task.model.named_buffers()}
        self.rows_ = RowIndex(task.x_train, task.y_train, "data_value_embedding")
        self.replay_error_ = None
        self.act_: int | None = None
        self.all_: torch.Tensor | None = None
        self.solver_ = self._pick_solver(task)
        final = None
        self.Q_: torch.Tensor | None = None
        self.energy_: float | None = None
        if self.solver_ == "subspace":  # Q^T e_z for every row from one replay and one adjoint sweep: [n, r]
            self.Q_, self.energy_ = gradient_subspace(task, self._rank(task), self.config.seed)
            self.all_, final = subspace_embeddings(self, self.Q_)  # the replay is also the check
        elif self.config.check_replay:
            final = self._run(None)[0]
        if self.config.check_replay and final is not None:
            ref = task.space.flatten(task.space.params(task.model))
            got = task.space.flatten({n: final[n] for n in task.space.names})
            self.replay_error_ = float((got - ref).norm() / ref.norm().clamp_min(1e-30))
            if not self.replay_error_ <= REPLAY_RTOL:
                raise MethodError(f"data_value_embedding: replaying the recorded trajectory does not reproduce this "
                                  f"model (relative distance {self.replay_error_:.2g}); the model is not the end of "
                                  "its recorded run")
        return self

    def _step_work(self, task: InfluenceTask) -> float:
        """Work of one tangent through the whole run: steps x batch x activations per sample."""
        tr = task.trajectory
        batch = max((len(b) for b in tr.batches), default=0)
        return float(tr.steps * batch * activation_size(task.model, task.x_train[:1]))

    def _pick_solver(self, task: InfluenceTask) -> str:
        if self.config.solver != "auto":
            return self.config.solver
        return "exact" if self._step_work(task) * task.n_train <= WORK_BUDGET else "subspace"

    def _rank(self, task: InfluenceTask) -> int:
        if self.config.rank != "auto":
            return int(self.config.rank)
        low, high = AUTO_RANK
        return int(min(high, max(low, WORK_BUDGET // max(self._step_work(task), 1.0))))

    # ------------------------------------------------------------------ the replayed step
    def _unflat(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(shape) for n, t, shape in zip(self.names_, flat.split(self.numels_), self.shapes_,
                                                        strict=True)}

    def _objective(self, theta: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The step's objective at the flat parameters ``theta [P]`` with sample weights ``w [|B|]``."""
        task = self._require_fit()
        per = task.loss_fn(functional_call(task.model, {**self.buffers_, **self._unflat(theta)}, (xb,)), yb)
        return (w * per).sum() / len(yb) + 0.5 * task.trajectory.weight_decay * (theta * theta).sum()

    def _step(self, k: int, xb: torch.Tensor, yb: torch.Tensor):
        """The update of step k as a function ``(theta, m, v, w) -> (theta, m, v)`` (PyTorch semantics)."""
        tr = self._require_fit().trajectory
        lr = tr.lrs[k]

        def step(theta, m, v, w):
            g = grad(self._objective)(theta, xb, yb, w)
            if tr.optimizer == "sgd":
                m2 = tr.momentum * m + g
                return theta - lr * m2, m2, v
            b1, b2 = tr.betas
            t = k + 1
            m2 = b1 * m + (1 - b1) * g
            v2 = b2 * v + (1 - b2) * g * g
            bc1, bc2 = 1 - b1 ** t, (1 - b2 ** t) ** 0.5
            root = (v2 + torch.finfo(g.dtype).tiny).sqrt()  # finite derivative at v = 0; below eps anyway
            return theta - (lr / bc1) * m2 / (root / bc2 + tr.eps), m2, v2

        return step

    def _replayer(self):
        """A copy of the model and of the trainer's own optimizer, at the recorded initial state: the primal
        replay runs the very steps training ran (``training.objective`` + ``torch.optim``), so it reproduces
        the trained weights bit for bit. A functional re-implementation drifts: float32 rounding differs
        by an ulp per step, and the digits CNN (ReLU, Adam) amplifies that to a 4% distance in 10 epochs."""
        task = self._require_fit()
        tr = task.trajectory
        model = copy.deepcopy(task.model).eval()
        model.load_state_dict(tr.initial_state)
        if tr.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=tr.lrs[0], momentum=tr.momentum)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=tr.lrs[0], betas=tr.betas, eps=tr.eps)
        return model, opt, dict(model.named_parameters())

    def _state(self, opt: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter]) -> tuple[torch.Tensor, ...]:
        """The optimizer's (theta, m, v) as flat ``[P]`` tensors (zeros for a state not yet created)."""
        keys = ("momentum_buffer", None) if self._require_fit().trajectory.optimizer == "sgd" else ("exp_avg",
                                                                                                    "exp_avg_sq")
        out = [torch.cat([params[n].detach().reshape(-1) for n in self.names_])]
        for key in keys:
            parts = []
            for n in self.names_:
                st = opt.state.get(params[n], {}).get(key) if key else None
                parts.append(torch.zeros_like(params[n]).reshape(-1) if st is None else st.detach().reshape(-1))
            out.append(torch.cat(parts))
        return tuple(out)

    def _run(self, tracked: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """Replay the trajectory; with ``tracked`` (training indices ``[b]``) also propagate their
        tangents (forward-mode AD through the functional step, at the replay's exact states). Returns
        (final theta, d theta_T / d(-w) ``{name: [b, *shape]}`` or None)."""
        task = self._require_fit()
        tr = task.trajectory
        model, opt, params = self._replayer()
        tan = None
        if tracked is not None:
            tan = tuple(torch.zeros((len(tracked), len(self.theta0_)), dtype=self.theta0_.dtype,
                                    device=self.theta0_.device) for _ in range(3))
            tracked = tracked.to(task.y_train.device)
        for k, idx in enumerate(tr.batches):
            idx = idx.to(task.y_train.device)
            xb, yb = task.x_train[idx], task.y_train[idx]
            if tan is not None:
                theta, m, v = self._state(opt, params)
                w = torch.ones(len(idx), dtype=theta.dtype, device=xb.device)
                primals = (theta, m, v, w)
                step = self._step(k, xb, yb)
                dw = -(tracked[:, None] == idx[None, :]).to(w.dtype)  # [b, |B_k|]: removing the tracked rows
                tan = self._propagate(step, primals, tan, dw)
            opt.param_groups[0]["lr"] = tr.lrs[k]
            opt.zero_grad()
            objective(model, xb, yb, tr.weight_decay).backward()
            opt.step()
        final = self._state(opt, params)[0]
        return self._unflat(final), (None if tan is None else self._unflat_rows(tan[0]))

    def _propagate(self, step, primals: tuple[torch.Tensor, ...], tan: tuple[torch.Tensor, ...],
                   dw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tangents ``[b, P]`` (theta, m, v) through one step (``dw [b, |B|]`` the weights' tangents),
        vmapped in chunks of :meth:`_chunk` rows (one call over all b rows thrashes the cache)."""
        def one(a, b_, c, d):
            return jvp(step, primals, (a, b_, c, d))[1]

        if len(dw) == 0:
            return tan
        chunk = self._chunk(dw.shape[1])
        parts = [vmap(one)(*(t[s:s + chunk] for t in tan), dw[s:s + chunk]) for s in range(0, len(dw), chunk)]
        return tuple(torch.cat([part[j].detach() for part in parts]) for j in range(3))

    def _chunk(self, batch: int) -> int:
        """Tangents per vmapped call: ``TANGENT_WORK_BUDGET`` floats over a step's batch activations plus
        the tangents' own state (1 thread, 1,437 rows: digits CNN 1.0 s per step at 64-128 rows against 6.2 s
        in one call; digits MLP the same either way, 0.10-0.125 s)."""
        task = self._require_fit()
        if self.act_ is None:
            self.act_ = activation_size(task.model, task.x_train[:1])
        return max(1, TANGENT_WORK_BUDGET // (batch * self.act_ + 8 * len(self.theta0_)))

    def _unflat_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.reshape(len(rows), *shape) for n, t, shape in
                zip(self.names_, rows.split(self.numels_, dim=1), self.shapes_, strict=True)}

    # ------------------------------------------------------------------ factors
    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Data value embeddings ``[b, p]`` (the change of the final parameters on removal)."""
        task = self._require_fit()
        if len(x) == 0:
            return torch.zeros((0, task.space.size), dtype=next(task.model.parameters()).dtype)
        idx = self.rows_(x, y)
        if self.solver_ == "subspace":  # computed in fit
            assert self.all_ is not None
            return as_model_dtype(task, self.all_[idx.to(self.all_.device)])
        if task.n_train * task.space.size <= CACHE_ELEMENTS:  # small: one replay for every row, kept
            if self.all_ is None:
                self.all_ = self._embeddings(torch.arange(task.n_train))
            return self.all_[idx.to(self.all_.device)]
        return self._embeddings(idx)

    def _embeddings(self, idx: torch.Tensor) -> torch.Tensor:
        task = self._require_fit()
        _, emb = self._run(idx)
        assert emb is not None
        return as_model_dtype(task, task.space.flatten({n: emb[n] for n in task.space.names}, batch_dims=1))

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Test gradients ``[b, p]`` (subspace: ``[b, r]``, ``g Q`` with the embeddings' Q)."""
        g = self._require_fit().gradients(x, y)
        if self.solver_ == "subspace":
            return g if self.Q_ is None else as_model_dtype(self._require_fit(), g.to(self.Q_.dtype) @ self.Q_)
        return g

    def fit_info(self) -> dict[str, Any]:
        tr = self._require_fit().trajectory
        return {"steps": tr.steps, "optimizer": tr.optimizer, "replay_relative_error": self.replay_error_,
                "solver": self.solver_,
                **({"rank": self.all_.shape[1], "subspace_energy": self.energy_} if self.solver_ == "subspace"
                   else {})}
