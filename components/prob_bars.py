"""Class probabilities of one sample as a small HTML bar chart (for ``st.html``).

Plain HTML and CSS instead of a plotly figure: the influence view shows one per selection, and
plotly's first draw of a chart took longer in the browser than the rest of the page together
(bench/bench_explorer.py). Same encoding as the plotly version it replaces: the predicted class in
its colour, the others grey, the true class outlined; ``true`` / ``pred`` above those bars; the
probability on hover (``title``) and in the accessible label.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from components.cards import html_text
from components.colors import NEUTRAL, class_color

#: above this many classes only the true and predicted classes are named under the axis
MAX_NAMED = 20
#: the probability at the top of the plot (room for the ``true`` / ``pred`` labels above a bar of 1)
TOP = 1.15


def probability_bars_html(probs: np.ndarray, class_names: Sequence[str], true: int, pred: int,
                          height: int = 230) -> str:
    """Bars of class probabilities ``[n_classes]`` (0..1), ``height`` pixels tall in all."""
    p = np.clip(np.nan_to_num(np.asarray(probs, dtype=np.float64)), 0.0, 1.0)
    n = len(p)
    named = n <= MAX_NAMED
    plot_h = height - 50  # the rest: class names and the axis title
    bars, names = [], []
    for i in range(n):
        name = html_text(class_names[i]) if i < len(class_names) else str(i)
        mark = "true" if i == true else "pred" if i == pred else ""
        color = class_color(i) if i == pred else NEUTRAL
        outline = "box-shadow:inset 0 0 0 3px #000;" if i == true else ""
        bars.append(
            f'<div class="ie-prob" title="class {name}: {p[i]:.3f}" style="flex:1 1 0;min-width:0;height:100%;'
            'display:flex;flex-direction:column;justify-content:flex-end;align-items:center;z-index:1">'
            f'<div style="font-size:0.7rem;color:#555;line-height:1.3">{mark}</div>'
            f'<div class="ie-prob-bar" style="width:72%;height:{100 * p[i] / TOP:.2f}%;min-height:1px;'
            f'background:{color};{outline}"></div></div>')
        shown = name if named or i in (true, pred) else ""
        names.append(f'<div style="flex:1 1 0;min-width:0;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;'
                     f'text-align:center">{shown}</div>')
    ticks = "".join(
        f'<div style="position:absolute;left:0;right:0;bottom:{100 * y / TOP:.2f}%;border-top:1px solid #eee"></div>'
        f'<div style="position:absolute;left:-30px;width:26px;text-align:right;bottom:{100 * y / TOP:.2f}%;'
        f'transform:translateY(50%);color:#666">{y:g}</div>' for y in (0.0, 0.5, 1.0))
    top3 = ", ".join(f"{class_names[i] if i < len(class_names) else i} {p[i]:.1%}" for i in np.argsort(-p)[:3])
    out = (f'<div class="ie-probs" role="img" aria-label="class probabilities: {html_text(top3)}" '
           f'style="height:{height}px;font-size:0.75rem;color:#444;padding:4px 8px 0 34px;box-sizing:border-box">'
           f'<div style="position:relative;height:{plot_h}px;display:flex;gap:3px;border-bottom:1px solid #999">'
           f'{ticks}{"".join(bars)}</div>'
           f'<div style="display:flex;gap:3px;margin-top:3px">{"".join(names)}</div>'
           '<div style="text-align:center;color:#666;margin-top:2px">class (bar height: probability)</div></div>')
    return re.sub(r"[\r\n]+", " ", out)
