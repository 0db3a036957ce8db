"""Pure plotly figure builders (no Streamlit): the embedding map, its overlay, the points of the
thumbnail strip beside it (plotly cannot show an image in a hover label), class probabilities.

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

from components.colors import DIVERGING, OPPONENT, PROPONENT, class_color

STAR_COLOR = "#ffc400"
OVERLAY_NAMES = ("proponent links", "opponent links", "top-k", "selected")
PREVIEW_NAME = "thumbnails"


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


def rank_scale(scores: np.ndarray) -> np.ndarray:
    """Signed rank of ``|score|`` in ``[-1, 1]`` (``[n]`` -> ``[n]``): ``sign(s) * rank(|s|) / #nonzero``.

    A linear scale set by the few extreme top-k scores leaves almost every point grey; ranks spread
    the colours evenly over the samples (zero stays 0, the largest |score| on each side is +-1 or
    close to it)."""
    s = np.asarray(scores, dtype=np.float64)
    a = np.abs(s)
    nz = a > 0
    out = np.zeros(len(s), dtype=np.float32)
    if nz.any():
        ranks = np.empty(int(nz.sum()), dtype=np.float64)
        ranks[np.argsort(a[nz], kind="stable")] = np.arange(1, int(nz.sum()) + 1)
        out[nz] = (np.sign(s[nz]) * ranks / nz.sum()).astype(np.float32)
    return out


def embedding_figure(xy: np.ndarray, labels: np.ndarray, n_train: int, class_names: Sequence[str], *,
                     scores: np.ndarray | None = None, scale: str = "rank", height: int = 620) -> go.Figure:
    """The big layer of the map: ``xy`` ``[n_train + n_test, 2]``, ``labels`` ``[n_train + n_test]``.

    Without ``scores``: one trace per class and split (train circles, test diamonds), class colours.
    With ``scores`` (``[n_train]`` signed influence on one test point): training points on a
    zero-centred diverging scale (blue = proponent, red = opponent) of the signed rank of ``|score|``
    (``scale="rank"``, :func:`rank_scale`; the colour bar is labelled in scores) or of the score
    itself (``"linear"``), sized by it, drawn most-influential last; test points as faint grey diamonds.
    The score is the third ``customdata`` column of the training trace (``[n_train, 3]`` float32).
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
        if scale not in ("rank", "linear"):
            raise ValueError(f"scale must be 'rank' or 'linear', got {scale!r}")
        amax = float(np.abs(s).max()) or 1.0
        color = rank_scale(s) if scale == "rank" else s
        cmax = 1.0 if scale == "rank" else amax
        order = np.argsort(np.abs(color), kind="stable")  # biggest last = on top
        size = 3.0 + 11.0 * np.sqrt(np.abs(color[order]) / cmax)
        bar = dict(title=dict(text="score<br>+ proponent<br>− opponent"), thickness=12, len=0.6)
        if scale == "rank":
            mags = np.abs(s[s != 0])
            qs = (0.5, 0.9, 1.0)
            vals = [float(np.quantile(mags, q)) if len(mags) else 0.0 for q in qs]
            bar.update(tickvals=[-q for q in qs[::-1]] + [0.0] + list(qs),
                       ticktext=[f"−{x:.2g}" for x in vals[::-1]] + ["0"] + [f"+{x:.2g}" for x in vals],
                       title=dict(text="score<br>(rank scale)<br>+ proponent<br>− opponent"))
        cd = np.concatenate([_ids(order, n_train).astype(np.float32), s[order, None]], axis=1)
        fig.add_trace(go.Scattergl(
            x=xy[order, 0], y=xy[order, 1], mode="markers", customdata=cd,
            name="train (influence)", showlegend=False, text=None,
            marker=dict(color=color[order], colorscale=DIVERGING, cmid=0.0, cmin=-cmax, cmax=cmax, size=size,
                        opacity=0.85, line=dict(width=0), colorbar=bar),
            hovertemplate="train #%{customdata[1]}<br>score %{customdata[2]:.3g}<extra></extra>",
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


def with_overlay(base: go.Figure, overlay: Sequence[go.BaseTraceType],
                 zoom: tuple[float, float, float, float] | None = None) -> go.Figure:
    """A shallow copy of ``base`` (its big traces reused, not re-validated) plus ``overlay``; ``zoom``
    (x0, x1, y0, y1) sets the visible area (a new ``uirevision``, so the browser applies it)."""
    fig = go.Figure(layout=base.layout, skip_invalid=True)
    fig.add_traces(list(base.data) + list(overlay))
    if zoom is not None:
        x0, x1, y0, y1 = (float(z) for z in zoom)
        fig.update_layout(uirevision=f"zoom {x0:.4g} {x1:.4g} {y0:.4g} {y1:.4g}")
        fig.update_xaxes(range=[x0, x1])
        fig.update_yaxes(range=[y0, y1])
    return fig


def zoom_box(xy: np.ndarray, ids: Sequence[int], pad: float = 0.15) -> tuple[float, float, float, float] | None:
    """The area (x0, x1, y0, y1) around the points ``ids`` (global ids into ``xy`` ``[n, 2]``), grown by
    ``pad`` of its size on each side (at least a small square); ``None`` without points."""
    ids = np.asarray(ids, dtype=np.int64)
    if not len(ids):
        return None
    pts = np.asarray(xy, dtype=np.float64)[ids]
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    full = np.ptp(np.asarray(xy, dtype=np.float64), axis=0).max() or 1.0
    w, h = max(x1 - x0, full * 0.02), max(y1 - y0, full * 0.02)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - w * (0.5 + pad), cx + w * (0.5 + pad), cy - h * (0.5 + pad), cy + h * (0.5 + pad))


def nearest_ids(xy: np.ndarray, gid: int, k: int) -> np.ndarray:
    """The ``k`` points nearest to point ``gid`` on the map (``xy`` ``[n, 2]``), nearest first, itself
    excluded (``[min(k, n - 1)]`` global ids; ties by id)."""
    pts = np.asarray(xy, dtype=np.float64)
    d = ((pts - pts[int(gid)]) ** 2).sum(1)
    d[int(gid)] = np.inf
    k = max(0, min(int(k), len(pts) - 1))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(d, k - 1)[:k]
    return part[np.lexsort((part, d[part]))].astype(np.int64)


def preview_ids(ids: Sequence[int], n_train: int, scores: np.ndarray | None = None, limit: int = 8) -> list[int]:
    """The first ``limit`` samples of a selection to show as thumbnails: most influential first by
    ``|score|`` when ``scores`` (``[n_train]``) are given (test points after), else in id order."""
    def key(g: int) -> tuple[float, int]:
        return (-abs(float(scores[g])) if scores is not None and g < n_train else 0.0, g)

    return sorted({int(g) for g in ids}, key=key)[:max(0, int(limit))]


def preview_trace(xy: np.ndarray, ids: Sequence[int], n_train: int) -> go.Scattergl:
    """The thumbnails' points on the map: a black ring numbered 1..n like the thumbnail strip beside it."""
    ids = np.asarray(ids, dtype=np.int64)
    pts = np.asarray(xy)[ids] if len(ids) else np.zeros((0, 2))
    return go.Scattergl(x=pts[:, 0], y=pts[:, 1], mode="markers+text", name=PREVIEW_NAME, showlegend=False,
                        text=[str(n + 1) for n in range(len(ids))], textposition="top right",
                        textfont=dict(size=13, color="black"), customdata=_ids(ids, n_train),
                        marker=dict(symbol="circle-open", size=14, color="black", line=dict(width=2)),
                        hovertemplate="thumbnail %{text}: #%{customdata[1]}<extra></extra>")


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
