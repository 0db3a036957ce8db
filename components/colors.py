"""Colours shared by every view: one fixed colour per class, and the proponent/opponent pair.

Proponents (positive scores) are blue, opponents (negative) red: the ends of a colour-blind-safe
diverging scale whose midpoint (score 0) is a light neutral grey.
"""

from __future__ import annotations

# Tableau 10, then a second set for datasets with more than ten classes.
CLASS_PALETTE: tuple[str, ...] = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
    "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c",
    "#98df8a", "#d62728", "#ff9896", "#9467bd", "#c5b0d5",
)
PROPONENT = "#2166ac"
OPPONENT = "#b2182b"
NEUTRAL = "#e6e6e6"
CORRECT = "#2e7d32"
WRONG = "#c62828"
# Plotly colourscale, used with cmid=0 so that zero is always the neutral midpoint.
DIVERGING: list[list] = [
    [0.0, OPPONENT], [0.25, "#ef8a62"], [0.5, NEUTRAL], [0.75, "#67a9cf"], [1.0, PROPONENT],
]


def class_color(label: int) -> str:
    """The colour of class ``label`` (cycles past the palette's length)."""
    return CLASS_PALETTE[int(label) % len(CLASS_PALETTE)]


def class_colors(n_classes: int) -> list[str]:
    """Colours for classes ``0..n_classes-1``."""
    return [class_color(i) for i in range(n_classes)]


def score_color(score: float) -> str:
    """Proponent blue for a positive score, opponent red for a negative one."""
    return PROPONENT if score >= 0 else OPPONENT
