"""Pure plotly builders for the Trust page (no Streamlit, no torch): inputs are the frames and dicts
returned by :class:`cache_format.evaluation.TrustResults`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from components.colors import CLASS_PALETTE, NEUTRAL, PROPONENT

RANDOM_COLOR = "#7f7f7f"


def _method_color(i: int) -> str:
    return CLASS_PALETTE[i % len(CLASS_PALETTE)]


def _num(v: Any) -> float:
    return float(v) if v is not None and np.isfinite(v) else float("nan")


def _base(fig: go.Figure, height: int, **layout: Any) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), plot_bgcolor="white",
                      hoverlabel=dict(bgcolor="white"), **layout)
    fig.update_xaxes(showgrid=True, gridcolor="#eeeeee", zeroline=False)
    fig.update_yaxes(showgrid=True, gridcolor="#eeeeee", zeroline=False)
    return fig


def lds_figure(table: pd.DataFrame, height: int = 260) -> go.Figure:
    """Horizontal bars: LDS per method with its bootstrap interval; ``table`` from ``method_table()``."""
    t = table[table["LDS"].notna()].sort_values("LDS")
    lds = t["LDS"].astype(float).to_numpy()
    lo = t["LDS low"].astype(float).to_numpy()
    hi = t["LDS high"].astype(float).to_numpy()
    fig = go.Figure(go.Bar(
        x=lds, y=t["method"], orientation="h", marker_color=PROPONENT,
        error_x=dict(type="data", symmetric=False, array=np.nan_to_num(hi - lds), arrayminus=np.nan_to_num(lds - lo),
                     color="#333333", thickness=1.2),
        customdata=np.stack([lo, hi], axis=1) if len(t) else None,
        hovertemplate="%{y}: LDS %{x:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]<extra></extra>",
    ))
    fig.add_vline(x=0, line_color="#999999", line_width=1)
    return _base(fig, height, xaxis_title="LDS (Spearman, mean over test points)", xaxis_range=[min(-0.1, *(lds - 0.05)) if len(lds) else -0.1, 1.0],
                 showlegend=False)


def damping_figure(frame: pd.DataFrame, height: int = 320) -> go.Figure:
    """LDS vs damping lambda (log x; lambda = 0 drawn at the left edge), one line per method; the best
    value is a star, the run's own value a ring."""
    fig = go.Figure()
    positive = frame.loc[frame["damping"] > 0, "damping"]
    zero_x = float(positive.min()) / 10 if len(positive) else 1e-6
    for i, (m, d) in enumerate(frame.groupby("method", sort=False)):
        d = d.sort_values("damping")
        x = np.where(d["damping"] > 0, d["damping"], zero_x)
        y = d["LDS"].astype(float)
        color = _method_color(i)
        label = np.where(d["damping"] > 0, d["damping"].map(lambda v: f"{v:g}"), "0")
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=m, line=dict(color=color), marker=dict(size=7),
            customdata=np.stack([label, d["error"].fillna("").astype(str)], axis=1),
            hovertemplate=f"{m}<br>lambda %{{customdata[0]}}: LDS %{{y:.3f}}<br>%{{customdata[1]}}<extra></extra>",
        ))
        best = d[d["best"]]
        if len(best):
            fig.add_trace(go.Scatter(x=np.where(best["damping"] > 0, best["damping"], zero_x), y=best["LDS"],
                                     mode="markers", marker=dict(symbol="star", size=16, color=color,
                                                                 line=dict(color="black", width=1)),
                                     name=f"{m}: best", showlegend=False, hoverinfo="skip"))
        cur = d[d["current"]]
        if len(cur):
            fig.add_trace(go.Scatter(x=np.where(cur["damping"] > 0, cur["damping"], zero_x), y=cur["LDS"],
                                     mode="markers", marker=dict(symbol="circle-open", size=18, color=color,
                                                                 line=dict(width=2)),
                                     name=f"{m}: run's value", showlegend=False, hoverinfo="skip"))
    fig.update_xaxes(type="log", exponentformat="e", minor=dict(showgrid=False),
                     title="damping lambda (log scale; the leftmost point is lambda = 0 if present)")
    return _base(fig, height, yaxis_title="LDS", legend=dict(orientation="h", y=1.12))


def agreement_figure(agreement: dict[str, Any], which: str = "spearman", height: int = 340) -> go.Figure:
    """Method x method heatmap of mean per-test Spearman (``which="spearman"``) or top-k overlap."""
    names: Sequence[str] = agreement["methods"]
    z = np.asarray(agreement[which], dtype=float)
    title = "mean Spearman" if which == "spearman" else f"top-{agreement.get('k', '')} overlap"
    fig = go.Figure(go.Heatmap(
        z=z, x=list(names), y=list(names), zmin=-1 if which == "spearman" else 0, zmax=1,
        colorscale=[[0.0, "#b2182b"], [0.5, NEUTRAL], [1.0, PROPONENT]] if which == "spearman"
        else [[0.0, NEUTRAL], [1.0, PROPONENT]],
        text=np.round(z, 2), texttemplate="%{text}", colorbar=dict(title=dict(text=title), thickness=12),
        hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed")
    return _base(fig, height)


def brittleness_figure(frame: pd.DataFrame, height: int = 320) -> go.Figure:
    """Fraction of sampled test points whose prediction flipped vs k removed: one line per method
    (removing its top-k proponents) and a dashed grey line for removing k random samples."""
    fig = go.Figure()
    methods = [m for m in frame["method"].unique() if m != "random"]
    for i, m in enumerate(methods):
        d = frame[frame["method"] == m].sort_values("k")
        fig.add_trace(go.Scatter(x=d["k"], y=d["flip_rate"], mode="lines+markers", name=f"{m}: top-k proponents",
                                 line=dict(color=_method_color(i), dash=("solid", "dot", "dashdot")[i % 3]),
                                 marker=dict(size=9 - 2 * (i % 3)),
                                 hovertemplate=f"{m}: remove top %{{x}} -> %{{y:.0%}} flipped<extra></extra>"))
    d = frame[frame["method"] == "random"].sort_values("k")
    if len(d):
        fig.add_trace(go.Scatter(x=d["k"], y=d["flip_rate"], mode="lines+markers", name="k random samples",
                                 line=dict(color=RANDOM_COLOR, dash="dash"),
                                 hovertemplate="random: remove %{x} -> %{y:.0%} flipped<extra></extra>"))
    ks = sorted(int(k) for k in frame["k"].unique())
    fig.update_yaxes(range=[-0.02, 1.02], tickformat=".0%", title="predictions flipped")
    fig.update_xaxes(title="k training samples removed", type="log", tickvals=ks, ticktext=[str(k) for k in ks],
                     minor=dict(showgrid=False))
    return _base(fig, height, legend=dict(orientation="h", y=1.15))


def loo_figure(predicted: np.ndarray, actual: np.ndarray, method: str, height: int = 320) -> go.Figure:
    """Scatter of predicted vs actual leave-one-out change of test loss (all (test, left-out) pairs)."""
    p, a = np.asarray(predicted, float).ravel(), np.asarray(actual, float).ravel()
    lim = float(np.nanmax(np.abs(np.concatenate([p, a])))) if len(p) else 1.0
    fig = go.Figure(go.Scattergl(x=p, y=a, mode="markers", marker=dict(size=4, color=PROPONENT, opacity=0.5),
                                 hovertemplate="predicted %{x:.2e}<br>actual %{y:.2e}<extra></extra>", name=method))
    fig.add_trace(go.Scatter(x=[-lim, lim], y=[-lim, lim], mode="lines", line=dict(color="#999999", dash="dot"),
                             hoverinfo="skip", showlegend=False))
    return _base(fig, height, xaxis_title=f"predicted change of test loss ({method}: score / n)",
                 yaxis_title="actual change after retraining", showlegend=False)
