"""Representer points (Yeh et al. 2018) on the penultimate-layer features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from precompute.errors import ConfigError, MethodError
from precompute.influence._common import as_model_dtype
from precompute.influence.base import Capabilities, InfluenceEstimator, InfluenceTask, MethodConfig
from precompute.models import last_linear, penultimate_features


@dataclass
class RepresenterConfig(MethodConfig):
    """``l2``: the L2 coefficient of the head's objective (None = the run's train.weight_decay, which
    is the one the head was trained with). ``damping`` is not used."""

    l2: float | None = None

    def validate(self) -> RepresenterConfig:
        super().validate()
        if self.l2 is not None and (not isinstance(self.l2, int | float) or self.l2 <= 0):
            raise ConfigError(f"influence.options.representer.l2: must be a number > 0 or omitted (got {self.l2!r})")
        return self


class Representer(InfluenceEstimator):
    """score(t, i) = alpha_{i, y_t} f_i . f_t with alpha_i = (e_{y_i} - p_i) / (l2 n).

    At a stationary point of mean CE + l2/2 |W|^2 the head is W = sum_i alpha_i f_i^T, so each test
    logit splits into one term per training sample; the term for the test's label class is the score
    (positive = excitatory = proponent). f = penultimate features with a 1 appended for the bias. Cost
    O(n d C) for features, O(d C) per pair; no gradients through the network, no Hessian. The cheapest
    method; only sees the last layer and assumes the head is at its L2-regularised optimum.
    """

    name = "representer"
    capabilities = Capabilities()
    #: its store rows are [C * (d + 1)] (head features), whatever p is: never refused for size
    factor_width_scales_with_p: ClassVar[bool] = False
    config_class = RepresenterConfig
    summary = "representer points on penultimate features (Yeh et al. 2018)"

    def fit(self, task: InfluenceTask) -> Representer:
        super().fit(task)
        self.l2_ = task.weight_decay if self.config.l2 is None else float(self.config.l2)
        if self.l2_ <= 0:
            raise MethodError("representer: needs an L2 coefficient > 0 (train.weight_decay is 0); set "
                              "influence.options.representer.l2")
        _, head = last_linear(task.model)
        self.bias_ = head.bias is not None
        self.n_classes_ = head.out_features
        return self

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        f = penultimate_features(self._require_fit().model, x).to(torch.float64)
        if self.bias_:
            f = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype, device=f.device)], dim=1)
        return f  # [b, d]

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self._require_fit()
        with torch.no_grad():
            p = torch.softmax(task.model(x).to(torch.float64), dim=1)
        alpha = (nn.functional.one_hot(y, self.n_classes_).to(p.dtype) - p) / (self.l2_ * task.n_train)  # [b, C]
        return as_model_dtype(task, (alpha[:, :, None] * self._features(x)[:, None, :]).reshape(len(x), -1))

    def query_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(y, self.n_classes_).to(torch.float64)
        q = (onehot[:, :, None] * self._features(x)[:, None, :]).reshape(len(x), -1)  # [b, C d]
        return as_model_dtype(self._require_fit(), q)

    def fit_info(self) -> dict[str, Any]:
        return {"l2": self.l2_}
