"""Pure builders of the Compare page (no Streamlit): the sign-aware overlap of two methods' top-k
lists and the score scatter that draws it.

A training sample in both methods' top-k lists agrees only when it has the *same sign* in both (a
proponent in both, or an opponent in both). A proponent under one method that is an opponent
under the other is a disagreement, counted and drawn apart (``opposite``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from components.colors import PROPONENT
from components.figures import plot_text

SAME_COLOR = "#6a3d9a"
OPPOSITE_COLOR = "#111111"
ONLY_B_COLOR = "#e08214"


def _set(ids: Sequence[int] | np.ndarray) -> set[int]:
    return {int(x) for x in np.ravel(np.asarray(ids))}


@dataclass(frozen=True)
class SignOverlap:
    """Which ids two methods' top-k lists share, by sign. Each field is a sorted list of training ids.

    ``same_pro``: proponents of both; ``same_opp``: opponents of both; ``pro_a_opp_b``: a proponent
    of A that is an opponent of B; ``opp_a_pro_b``: the reverse.
    """

    same_pro: list[int]
    same_opp: list[int]
    pro_a_opp_b: list[int]
    opp_a_pro_b: list[int]

    @property
    def same(self) -> list[int]:
        """Ids with the same sign in both lists."""
        return sorted(self.same_pro + self.same_opp)

    @property
    def opposite(self) -> list[int]:
        """Ids a proponent in one method and an opponent in the other."""
        return sorted(self.pro_a_opp_b + self.opp_a_pro_b)


def sign_overlap(pro_a: Sequence[int], opp_a: Sequence[int], pro_b: Sequence[int], opp_b: Sequence[int]) -> SignOverlap:
    """The sign-aware overlap of method A's and B's top-k proponents / opponents (``[k]`` ids each)."""
    pa, oa, pb, ob = _set(pro_a), _set(opp_a), _set(pro_b), _set(opp_b)
    return SignOverlap(sorted(pa & pb), sorted(oa & ob), sorted(pa & ob), sorted(oa & pb))


def agreement(index: int, pro_other: Sequence[int], opp_other: Sequence[int], which: str) -> str:
    """The table cell for training sample ``index`` of one side's ``which`` ("pro"/"opp") list: how the
    other method ranks it ("same sign", "opposite sign" or "")."""
    in_pro, in_opp = index in _set(pro_other), index in _set(opp_other)
    if (which == "pro" and in_pro) or (which == "opp" and in_opp):
        return "✓ same sign"
    if in_pro or in_opp:
        return "✗ opposite sign"
    return ""


def method_scatter_figure(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str, pro_a: Sequence[int] = (),
                          opp_a: Sequence[int] = (), pro_b: Sequence[int] = (), opp_b: Sequence[int] = (),
                          height: int = 420) -> go.Figure:
    """Score of every training sample under two methods (``a``, ``b``: ``[n_train]``), their top-k ids
    highlighted by agreement: same sign in both, opposite sign (a disagreement), one method only."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    ov = sign_overlap(pro_a, opp_a, pro_b, opp_b)
    top_a, top_b = _set(pro_a) | _set(opp_a), _set(pro_b) | _set(opp_b)
    both = top_a & top_b
    name_a, name_b = plot_text(name_a), plot_text(name_b)
    groups = (("same sign in both top-k", ov.same, SAME_COLOR, 10, "circle"),
              ("opposite sign (proponent in one, opponent in the other)", ov.opposite, OPPOSITE_COLOR, 11, "x"),
              (f"{name_a} top-k only", sorted(top_a - both), PROPONENT, 7, "circle"),
              (f"{name_b} top-k only", sorted(top_b - both), ONLY_B_COLOR, 7, "circle"))
    fig = go.Figure(go.Scattergl(x=a, y=b, mode="markers", name="all training samples",
                                 marker=dict(color="#9e9e9e", size=3, opacity=0.5),
                                 hovertemplate="%{x:.3g}, %{y:.3g}<extra></extra>"))
    for name, ids, color, size, symbol in groups:
        ids_arr = np.asarray(ids, dtype=np.int64)
        fig.add_trace(go.Scattergl(x=a[ids_arr], y=b[ids_arr], mode="markers", name=name, customdata=ids_arr,
                                   marker=dict(color=color, size=size, symbol=symbol, line=dict(color="white", width=1)),
                                   hovertemplate="train #%{customdata}<br>%{x:.3g} vs %{y:.3g}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor="white",
                      xaxis=dict(title=f"{name_a} score", zeroline=True, zerolinecolor="#bbb", gridcolor="#eee"),
                      yaxis=dict(title=f"{name_b} score", zeroline=True, zerolinecolor="#bbb", gridcolor="#eee"),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    return fig


def overlap_counts(ov: SignOverlap, k_pro: int, k_opp: int) -> dict[str, str]:
    """The Compare page's headline numbers: ``{"Proponents shared": "3 / 10", ...}``."""
    return {"Proponents shared": f"{len(ov.same_pro)} / {k_pro}", "Opponents shared": f"{len(ov.same_opp)} / {k_opp}",
            "Opposite sign": f"{len(ov.opposite)}"}
