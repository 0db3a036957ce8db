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


def _channel(c: float) -> float:
    """One sRGB channel (0..1) to linear light (WCAG 2)."""
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def luminance(hex_color: str) -> float:
    """WCAG relative luminance of ``#rrggbb`` (0 = black, 1 = white)."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) / 255 for i in (0, 2, 4))
    return 0.2126 * _channel(r) + 0.7152 * _channel(g) + 0.0722 * _channel(b)


def contrast_ratio(a: str, b: str) -> float:
    """WCAG contrast ratio of two ``#rrggbb`` colours (1 to 21; text needs >= 4.5)."""
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_color(background: str) -> str:
    """Black or white: whichever reads better on ``background`` (``#rrggbb``)."""
    return "#000000" if contrast_ratio(background, "#000000") >= contrast_ratio(background, "#ffffff") else "#ffffff"
