"""Pure plotly figure builders (no Streamlit): the embedding map, its overlay, class probabilities.

Sample ids are *global*: ``0..n_train-1`` are training samples, ``n_train + j`` is test sample ``j``
(the row order of the cached embedding). Every point carries ``customdata = [global_id, index]``,
because a point's position in a selection event counts within its own trace only.

In a real browser a selected point's ``customdata`` does not come back as a list: plotly.py ships
numpy arrays base64-encoded (``{"dtype": "i4", "bdata": ..., "shape": "n, 2"}``), plotly.js decodes a
2-D one into rows of ``Int32Array``, and Streamlit's ``JSON.stringify`` of the event turns such a row
into ``{"0": id, "1": index}``. :func:`point_id` reads all three forms (scalar, list, mapping).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from components.colors import DIVERGING, NEUTRAL, OPPONENT, PROPONENT, class_color

STAR_COLOR = "#ffc400"
OVERLAY_NAMES = ("proponent links", "opponent links", "top-k", "selected")


def plot_text(value: object) -> str:
    """A string from a cache (a class or method name) as plotly text: plotly renders a few HTML tags
    (``<a href>``, ``<b>``, ``<br>``) in names, hover text and axis labels, so ``<``, ``>`` and ``&``
    are escaped (plotly shows the entities as the characters) and line breaks become spaces."""
    return html.escape(re.sub(r"\s+", " ", str(value)), quote=False)


def _ids(global_ids: np.ndarray, n_train: int) -> np.ndarray:
    """``[n] -> [n, 2]`` int32 customdata: (global id, index within its split)."""
    g = np.asarray(global_ids, dtype=np.int32)
    return np.stack([g, np.where(g >= n_train, g - n_train, g)], axis=1).astype(np.int32)


def _layout(fig: go.Figure, height: int) -> go.Figure:
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor="white",
        legend=dict(itemsizing="constant", title_text="class", orientation="v"),
        uirevision="embedding",  # keep zoom/pan across reruns
        hoverlabel=dict(bgcolor="white"),
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x", scaleratio=1)
    return fig


def embedding_figure(xy: np.ndarray, labels: np.ndarray, n_train: int, class_names: Sequence[str], *,
                     scores: np.ndarray | None = None, height: int = 620) -> go.Figure:
    """The big layer of the map: ``xy`` ``[n_train + n_test, 2]``, ``labels`` ``[n_train + n_test]``.

    Without ``scores``: one trace per class and split (train circles, test diamonds), class colours.
    With ``scores`` (``[n_train]`` signed influence on one test point): training points on a
    zero-centred diverging scale (blue = proponent, red = opponent), sized by ``|score|``, drawn
    most-influential last; test points as faint grey diamonds.
    """
    xy = np.asarray(xy, dtype=np.float32)
    labels = np.asarray(labels)
    n = len(xy)
    gid = np.arange(n, dtype=np.int32)
    is_test = gid >= n_train
    fig = go.Figure()
    if scores is None:
        for c, cname in enumerate(plot_text(n) for n in class_names):
            for split, mask, symbol, size in (("train", ~is_test, "circle", 4), ("test", is_test, "diamond", 6)):
                m = mask & (labels == c)
                if not m.any():
                    continue
                fig.add_trace(go.Scattergl(
                    x=xy[m, 0], y=xy[m, 1], mode="markers", customdata=_ids(gid[m], n_train),
                    name=str(cname), legendgroup=str(cname), showlegend=split == "train",
                    marker=dict(color=class_color(c), size=size, symbol=symbol, opacity=0.75 if split == "train" else 0.9),
                    hovertemplate=f"{split} #%{{customdata[1]}}<br>label {cname}<extra></extra>",
                ))
    else:
        s = np.asarray(scores, dtype=np.float32)
        if s.shape != (n_train,):
            raise ValueError(f"scores must have shape ({n_train},), got {s.shape}")
        amax = float(np.abs(s).max()) or 1.0
        order = np.argsort(np.abs(s), kind="stable")  # biggest last = on top
        size = 3.0 + 11.0 * np.sqrt(np.abs(s[order]) / amax)
        fig.add_trace(go.Scattergl(
            x=xy[order, 0], y=xy[order, 1], mode="markers", customdata=_ids(order, n_train),
            name="train (influence)", showlegend=False, text=None,
            marker=dict(color=s[order], colorscale=DIVERGING, cmid=0.0, cmin=-amax, cmax=amax, size=size,
                        opacity=0.85, line=dict(width=0),
                        colorbar=dict(title=dict(text="score<br>+ proponent<br>− opponent"), thickness=12, len=0.6)),
            hovertemplate="train #%{customdata[1]}<br>score %{marker.color:.3g}<extra></extra>",
        ))
        fig.add_trace(go.Scattergl(
            x=xy[is_test, 0], y=xy[is_test, 1], mode="markers", customdata=_ids(gid[is_test], n_train),
            name="test", showlegend=False, marker=dict(color="#b0b0b0", size=4, symbol="diamond", opacity=0.45),
            hovertemplate="test #%{customdata[1]}<extra></extra>",
        ))
    return _layout(fig, height)


def _links(xy: np.ndarray, focus: int, ids: np.ndarray) -> tuple[list, list]:
    xs: list = []
    ys: list = []
    fx, fy = float(xy[focus, 0]), float(xy[focus, 1])
    for i in ids:
        xs += [fx, float(xy[i, 0]), None]
        ys += [fy, float(xy[i, 1]), None]
    return xs, ys


def overlay_traces(xy: np.ndarray, n_train: int, focus: int | None, proponents: Sequence[int] = (),
                   opponents: Sequence[int] = (), focus_label: str = "") -> list[go.Scattergl]:
    """Small traces drawn over the big layer: the focused sample as a star, its top-k linked.

    ``focus`` and the top-k lists are global ids (``None``: nothing selected, no traces).
    """
    if focus is None:
        return []
    xy = np.asarray(xy)
    pro = np.asarray(proponents, dtype=np.int64)
    opp = np.asarray(opponents, dtype=np.int64)
    traces = []
    for ids, color, name in ((pro, PROPONENT, OVERLAY_NAMES[0]), (opp, OPPONENT, OVERLAY_NAMES[1])):
        xs, ys = _links(xy, focus, ids)
        traces.append(go.Scattergl(x=xs, y=ys, mode="lines", name=name, showlegend=False, hoverinfo="skip",
                                   line=dict(color=color, width=1.2), opacity=0.7))
    linked = np.concatenate([pro, opp]).astype(np.int64)
    colors = [PROPONENT] * len(pro) + [OPPONENT] * len(opp)
    traces.append(go.Scattergl(
        x=xy[linked, 0] if len(linked) else [], y=xy[linked, 1] if len(linked) else [], mode="markers",
        name=OVERLAY_NAMES[2], showlegend=False, customdata=_ids(linked, n_train),
        marker=dict(symbol="circle-open", size=11, color=colors, line=dict(width=2)),
        hovertemplate="train #%{customdata[1]}<extra>top-k</extra>",
    ))
    traces.append(go.Scattergl(
        x=[float(xy[focus, 0])], y=[float(xy[focus, 1])], mode="markers", name=OVERLAY_NAMES[3], showlegend=False,
        customdata=_ids(np.array([focus]), n_train),
        marker=dict(symbol="star", size=22, color=STAR_COLOR, line=dict(color="black", width=1.5)),
        hovertemplate=(plot_text(focus_label) or "selected") + "<extra></extra>",
    ))
    return traces


def with_overlay(base: go.Figure, overlay: Sequence[go.BaseTraceType]) -> go.Figure:
    """A shallow copy of ``base`` (its big traces reused, not re-validated) plus ``overlay``."""
    fig = go.Figure(layout=base.layout, skip_invalid=True)
    fig.add_traces(list(base.data) + list(overlay))
    return fig


def point_id(customdata: Any) -> int | None:
    """The global id in one event point's ``customdata``: ``7``, ``[7, 7]`` or, from a browser, ``{"0": 7, "1": 7}``."""
    cd = customdata
    if isinstance(cd, Mapping):
        cd = cd.get("0", cd.get(0))
    elif isinstance(cd, (list, tuple, np.ndarray)):
        cd = cd[0] if len(cd) else None
    if cd is None or isinstance(cd, (Mapping, list, tuple, str)):
        return None
    try:
        return int(cd)
    except (TypeError, ValueError):
        return None


def selected_ids(event: Mapping[str, Any] | None) -> list[int]:
    """Global ids of the points in a ``st.plotly_chart`` selection event, in order, without repeats.

    Points without a readable id (e.g. from a trace without ``customdata``) are left out.
    """
    if not event:
        return []
    sel = event.get("selection") or {}
    out: list[int] = []
    seen: set[int] = set()
    for p in sel.get("points") or []:
        g = point_id(p.get("customdata"))
        if g is None:
            continue
        if g not in seen:
            seen.add(g)
            out.append(g)
    return out


def is_click(event: Mapping[str, Any] | None) -> bool:
    """True for a single-point click (no box or lasso drawn)."""
    if not event:
        return False
    sel = event.get("selection") or {}
    return len(sel.get("points") or []) == 1 and not sel.get("box") and not sel.get("lasso")


def probability_figure(probs: np.ndarray, class_names: Sequence[str], true: int, pred: int,
                       height: int = 230) -> go.Figure:
    """Bar chart of class probabilities ``[n_classes]``: predicted class in its colour, true class outlined."""
    p = np.asarray(probs, dtype=np.float64)
    colors = [class_color(i) if i == pred else NEUTRAL for i in range(len(p))]
    line_w = [3 if i == true else 0 for i in range(len(p))]
    text = ["true" if i == true and i == pred else "true" if i == true else "pred" if i == pred else ""
            for i in range(len(p))]
    fig = go.Figure(go.Bar(x=[plot_text(c) for c in class_names], y=p, marker=dict(color=colors, line=dict(color="black", width=line_w)),
                           text=text, textposition="outside", hovertemplate="class %{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=20, b=10), plot_bgcolor="white",
                      yaxis=dict(range=[0, 1.15], title="probability", gridcolor="#eee"),
                      xaxis=dict(type="category", title="class"))
    return fig


def method_scatter_figure(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str,
                          top_a: Sequence[int] = (), top_b: Sequence[int] = (), height: int = 420) -> go.Figure:
    """Score of every training sample under two methods ``[n_train]`` each; top-k sets highlighted."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    sa, sb = set(map(int, top_a)), set(map(int, top_b))
    name_a, name_b = plot_text(name_a), plot_text(name_b)
    groups = (("both top-k", sorted(sa & sb), "#6a3d9a", 9), (f"{name_a} only", sorted(sa - sb), PROPONENT, 7),
              (f"{name_b} only", sorted(sb - sa), "#e08214", 7))
    fig = go.Figure(go.Scattergl(x=a, y=b, mode="markers", name="all training samples",
                                 marker=dict(color="#9e9e9e", size=3, opacity=0.5),
                                 hovertemplate="%{x:.3g}, %{y:.3g}<extra></extra>"))
    for name, ids, color, size in groups:
        ids_arr = np.asarray(ids, dtype=np.int64)
        fig.add_trace(go.Scattergl(x=a[ids_arr], y=b[ids_arr], mode="markers", name=name, customdata=ids_arr,
                                   marker=dict(color=color, size=size, line=dict(color="white", width=1)),
                                   hovertemplate="train #%{customdata}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor="white",
                      xaxis=dict(title=f"{name_a} score", zeroline=True, zerolinecolor="#bbb", gridcolor="#eee"),
                      yaxis=dict(title=f"{name_b} score", zeroline=True, zerolinecolor="#bbb", gridcolor="#eee"),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    return fig
