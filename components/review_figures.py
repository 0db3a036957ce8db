"""Plotly figure builders for the mislabel review page (pure: data in, figure out; no Streamlit)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from components.figures import plot_text

_CHOSEN = "#d62728"
_LIVE = "#1f77b4"
_OTHER = "rgba(120,120,120,0.55)"


def detection_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], chosen: str,
                     live: tuple[np.ndarray, np.ndarray] | None = None, n_flipped: int | None = None,
                     height: int = 340) -> go.Figure:
    """Fraction of flipped labels found vs fraction of the training set inspected.

    ``curves``: method -> (x, y) from :func:`cache_format.mislabels.detection_curve`; ``chosen`` is drawn
    bold, the others thin, random inspection as the diagonal, and ``live`` (the reviewer's own
    progress, in the order they reviewed) with markers.
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="random inspection",
                             line={"color": "black", "dash": "dot", "width": 1}))
    for key, (x, y) in curves.items():
        if key == chosen:
            continue
        name = plot_text(key)
        fig.add_trace(go.Scatter(x=_thin(x), y=_thin(y), mode="lines", name=name,
                                 line={"color": _OTHER, "width": 1}, hovertemplate=f"{name}<br>inspected %{{x:.1%}}"
                                 "<br>found %{y:.1%}<extra></extra>"))
    if chosen in curves:
        x, y = curves[chosen]
        shown = plot_text(chosen)
        fig.add_trace(go.Scatter(x=_thin(x), y=_thin(y), mode="lines", name=f"{shown} (chosen)",
                                 line={"color": _CHOSEN, "width": 3}, hovertemplate=f"{shown}<br>inspected "
                                 "%{x:.1%}<br>found %{y:.1%}<extra></extra>"))
    if live is not None and len(live[0]) > 1:
        fig.add_trace(go.Scatter(x=live[0], y=live[1], mode="lines+markers", name="your review so far",
                                 line={"color": _LIVE, "width": 3}, marker={"size": 4},
                                 hovertemplate="reviewed %{x:.1%}<br>flipped found %{y:.1%}<extra></extra>"))
    title = "Detection: flipped labels found vs training set inspected"
    if n_flipped is not None:
        title += f" ({n_flipped} flipped)"
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=height, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      xaxis={"title": "fraction of training set inspected", "tickformat": ".0%", "range": [0, 1]},
                      yaxis={"title": "fraction of flipped labels found", "tickformat": ".0%", "range": [0, 1.02]},
                      legend={"orientation": "h", "y": -0.25}, template="plotly_white")
    return fig


def progress_figure(class_names: Sequence[str], total: Sequence[int], reviewed: Sequence[int],
                    unsure: Sequence[int], height: int = 260) -> go.Figure:
    """Per-class review progress: stacked bars reviewed / unsure / pending, by given label."""
    total, reviewed, unsure = (np.asarray(a, np.int64) for a in (total, reviewed, unsure))
    pending = total - reviewed - unsure
    x = [plot_text(c) for c in class_names]
    fig = go.Figure()
    for name, vals, color in (("reviewed", reviewed, "#2ca02c"), ("unsure", unsure, "#ff7f0e"),
                              ("pending", pending, "#d9d9d9")):
        fig.add_trace(go.Bar(x=x, y=vals, name=name, marker_color=color,
                             hovertemplate=f"class %{{x}}: %{{y}} {name}<extra></extra>"))
    fig.update_layout(barmode="stack", height=height, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      title={"text": "Progress by given label", "font": {"size": 14}},
                      xaxis={"title": "given label", "type": "category"}, yaxis={"title": "training samples"},
                      legend={"orientation": "h", "y": -0.3}, template="plotly_white")
    return fig


def live_curve(review_order: Sequence[int], flipped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of the training set reviewed, fraction of flipped found) in the reviewer's order."""
    flipped = np.asarray(flipped, bool)
    order = np.asarray(review_order, np.int64)
    found = np.concatenate([[0], np.cumsum(flipped[order])]) / max(int(flipped.sum()), 1)
    return np.arange(len(order) + 1) / max(len(flipped), 1), found


def _thin(a: np.ndarray, max_points: int = 400) -> np.ndarray:
    """Subsample a long monotone curve for drawing (keeps both ends)."""
    a = np.asarray(a)
    if len(a) <= max_points:
        return a
    idx = np.unique(np.linspace(0, len(a) - 1, max_points).round().astype(int))
    return a[idx]
