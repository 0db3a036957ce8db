"""Sample cards: a thumbnail, labels, a score bar and badges, with a button (or a page link) that
opens the sample.

``card_html`` and ``score_bar_html`` are pure (unit-tested); ``card_grid`` lays cards out with
Streamlit: per card one ``st.html`` body (cheaper for the browser than markdown) and one
``st.button``, or with ``link`` one ``st.page_link`` (a page switch in one script run, and a real
link: a middle click opens it in a new tab).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from components.colors import score_color

#: markdown punctuation that could start a link or image: as character references (HTML shows them
#: as the characters), so text from a cache stays text even where markdown would see it
_MD = {ord(c): f"&#{ord(c)};" for c in "![]`$*~|\\"}


_BARE_URL = re.compile(r"(?i)\b(https?:|www)(?=//|\.)")


def html_text(text: object) -> str:
    """Text from a cache (a label, a file path) for the card's HTML: escaped for HTML and markdown (a
    bare URL gets an invisible word joiner after its scheme, so markdown never makes it a link)."""
    return _BARE_URL.sub("\\1\u2060", html.escape(str(text)).translate(_MD))


@dataclass(frozen=True)
class Card:
    """One sample to show. ``value`` is the id passed to the click handler."""

    key: str
    value: int
    image_uri: str
    button: str
    alt: str
    lines: tuple[str, ...] = ()  # HTML snippets, one per line (already escaped)
    score: float | None = None
    scale: float = 1.0  # |score| that fills the bar
    badges: tuple[str, ...] = field(default_factory=tuple)
    accent: str = "#d0d0d0"
    title: str = ""  # hover text of the image (e.g. the source file)


def score_bar_html(score: float, scale: float) -> str:
    """A horizontal bar whose length is ``|score| / scale`` (capped at 100%), blue if positive, red if negative."""
    frac = min(1.0, abs(score) / scale) if scale > 0 else 0.0
    color = score_color(score)
    return (f'<div class="ie-bar" title="score {score:+.4g}" style="height:7px;background:#eee;border-radius:4px;'
            f'margin:4px 0 1px 0;overflow:hidden"><div style="width:{100 * frac:.1f}%;height:100%;'
            f'background:{color};border-radius:4px"></div></div>'
            f'<div style="font-size:0.78rem;color:{color};font-variant-numeric:tabular-nums">{score:+.3g}</div>')


def badge_html(text: str, color: str = "#b26a00", background: str = "#fff3e0") -> str:
    """A small rounded label (e.g. 'label ≠ 3')."""
    return (f'<span class="ie-badge" style="display:inline-block;font-size:0.72rem;padding:1px 7px;margin:2px 2px 0 0;'
            f'border-radius:9px;color:{color};background:{background};border:1px solid {color}55">'
            f"{html_text(text)}</span>")


def card_html(card: Card, image_px: int = 96) -> str:
    """The card body (image, lines, score bar, badges) as one HTML block."""
    parts = [
        f'<div class="ie-card" style="border-top:4px solid {card.accent};padding-top:6px;text-align:center">',
        f'<img class="ie-img" src="{html.escape(card.image_uri)}" alt="{html_text(card.alt)}"'
        + (f' title="{html_text(card.title)}"' if card.title else "")
        + f' width="{image_px}" height="{image_px}" '
        f'style="image-rendering:pixelated;border-radius:4px;width:100%;max-width:{image_px}px;height:auto;aspect-ratio:1/1;object-fit:contain;background:#000"/>',
        '<div style="font-size:0.82rem;line-height:1.35;margin-top:4px;text-align:left">',
        *[f"<div>{line}</div>" for line in card.lines],
    ]
    if card.score is not None:
        parts.append(score_bar_html(card.score, card.scale))
    parts.append("".join(badge_html(b) for b in card.badges))
    parts.append("</div></div>")
    # one line: a blank line (e.g. in a label from a CSV) would end the HTML block and let markdown in
    return re.sub(r"[\r\n\f\v\u2028\u2029]+", " ", "".join(parts))


#: the whole card (thumbnail included) is its button or link: its ``::after`` stretches over the
#: bordered container (the "stretched link" pattern; ``st.image`` / HTML have no click event)
_CARD = "div[class*='st-key-iecard_']"
CARD_CSS = ("<style>" + _CARD + "{position:relative}"
            f"{_CARD} [data-testid=stElementContainer],{_CARD} [data-testid=stButton],{_CARD} [data-testid=stButton] button,"
            f"{_CARD} [data-testid=stPageLink],{_CARD} [data-testid=stPageLink] *{{position:static!important}}"
            f"{_CARD} [data-testid=stButton] button::after,{_CARD} [data-testid=stPageLink-NavLink]::after{{content:'';"
            "position:absolute;inset:0;z-index:1;cursor:pointer}"
            f"{_CARD} [data-testid=stPageLink-NavLink]{{justify-content:center;border:1px solid rgba(49,51,63,0.2);"
            "border-radius:0.5rem;min-height:2.5rem;margin:0}"
            f"{_CARD} [data-testid=stPageLink-NavLink] [data-testid=stIconMaterial]{{display:none}}"
            f"{_CARD}:hover [data-testid=stPageLink-NavLink]{{border-color:#2166ac}}"
            f"{_CARD}:hover{{box-shadow:0 0 0 2px #2166ac55;border-radius:0.5rem}}</style>")


def grid_css(n_cols: int) -> str:
    """The style of a card grid of ``n_cols`` per row: every card one column wide (the row's gap,
    "small", is 1rem); two per row on a narrow screen."""
    sel = f"div[class*='st-key-iegrid{n_cols}_']>div"
    return (f"<style>{sel}{{flex:0 0 calc((100% - {n_cols - 1}rem) / {n_cols})!important;min-width:0!important}}"
            f"@media (max-width:640px){{{sel}{{flex-basis:calc((100% - 1rem) / 2)!important}}}}</style>")


def card_grid(cards: Sequence[Card], n_cols: int, on_click: Callable[[int], None] | None = None,
              image_px: int = 96, link: Callable[[int], tuple[Any, dict[str, str]]] | None = None) -> None:
    """Cards in rows of ``n_cols`` (one wrapping row); clicking a card (its thumbnail, text or button) calls
    ``on_click(card.value)`` before the rerun, or with ``link`` opens ``link(card.value)`` = (an
    ``st.Page``, its query parameters) as a page link."""
    if not cards:
        return
    if (on_click is None) == (link is None):
        raise ValueError("card_grid needs exactly one of on_click and link")
    st.html(CARD_CSS + grid_css(n_cols))
    # one wrapping row of cards, not st.columns per row: about 20 fewer blocks for the browser to lay out
    with st.container(horizontal=True, gap="small", key=f"iegrid{n_cols}_{cards[0].key}"):
        for card in cards:
            with st.container(border=True, key=f"iecard_{card.key}"):
                st.html(card_html(card, image_px))
                if link is not None:
                    page, params = link(card.value)
                    st.page_link(page, label=card.button, query_params=params, width="stretch")
                else:
                    st.button(card.button, key=card.key, on_click=on_click, args=(card.value,), width="stretch")
