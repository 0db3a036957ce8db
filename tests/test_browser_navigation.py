"""Issue 15 in a real browser (Debian's chromium under playwright, the digits run, the server and
browser fixtures of tests/test_e2e_browser.py): Back / Forward through a selection, a gallery filter
surviving a round trip and a reload, a lasso sent to the review queue, the review page scrolled to
the top after a keyboard decision, presenter mode at 1280x720 (card boxes inside the viewport, chip
contrast >= 4.5:1 from the computed colours). ``INFLUENCE_EXPLORER_SCREENSHOTS=docs/screenshots``
also writes ``presenter.png``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from test_e2e_browser import (  # noqa: F401  (fixtures and helpers, shared)
    GALLERY_CARD,
    ROOT,
    _drag_select,
    _inside,
    _map,
    _settle,
    browser,
    page,
    server,
)

from cache_format.runs import RunCache

pytestmark = pytest.mark.slow


def test_back_and_forward_through_a_selection(server: str, digits_run: Path, page):  # noqa: F811
    """test -> training sample -> Back shows the test point again; Forward the sample."""
    want = RunCache(digits_run).method_array("exact", "top_proponents")[42, 0]
    page.goto(f"{server}/influence?run=digits&test=42&method=exact")
    _settle(page, "h1:has-text('Test #42')")
    page.locator(f"button:has-text('train #{want}')").first.click()
    _settle(page, f"h1:has-text('Training sample #{want}')")
    assert f"train={want}" in page.url
    page.go_back()
    _settle(page, "h1:has-text('Test #42')")
    assert "train=" not in page.url and "test=42" in page.url
    page.go_forward()
    _settle(page, f"h1:has-text('Training sample #{want}')")
    assert f"train={want}" in page.url


def _gallery_ids(pg) -> list[int]:
    return [int(t.split("#")[1]) for t in pg.locator(GALLERY_CARD).all_inner_texts()]


def test_gallery_filter_survives_a_round_trip_and_a_reload(server: str, digits_run: Path, page):  # noqa: F811
    """Filter the gallery, open a card by its thumbnail, come back through the menu, then reload:
    the filter, its widgets and its cards are still there (they live in the URL)."""
    test = RunCache(digits_run).test_samples()
    wrong = set(test.index[~test["correct"]].tolist())
    page.goto(f"{server}/predictions?run=digits")
    _settle(page, GALLERY_CARD)
    page.locator("[data-testid=stButtonGroup] button:has-text('Incorrect')").click()
    page.wait_for_url(re.compile(r"outcome=incorrect"), timeout=15_000)
    matching = f"text={len(wrong):,} matching"
    _settle(page, matching)
    shown = _gallery_ids(page)
    assert shown and set(shown) <= wrong, shown
    img = page.locator("img[alt^='test #']").first.bounding_box()  # the thumbnail itself opens the card
    page.mouse.click(img["x"] + img["width"] / 2, img["y"] + img["height"] / 2)
    _settle(page, f"h1:has-text('Test #{shown[0]}')")
    page.locator("[data-testid=stTopNavLink]:has-text('Predictions')").click()
    _settle(page, matching)
    for _ in range(2):  # after the round trip, then after a reload
        assert "outcome=incorrect" in page.url
        assert _gallery_ids(page) == shown
        active = page.locator("[data-testid=stButtonGroup] button[aria-checked=true], "
                              "[data-testid=stButtonGroup] button[kind*=Active]").all_inner_texts()
        assert any("Incorrect" in a for a in active), active
        page.reload()
        _settle(page, matching)


def test_lasso_selection_is_sent_to_the_review_queue(server: str, digits_run: Path, page):  # noqa: F811
    n_train = RunCache(digits_run).n_train
    page.goto(f"{server}/embedding?run=digits")
    _settle(page, "[data-testid=stPlotlyChart] .main-svg")
    pts, box = _map(page)
    train_pts = [p for p in pts if p["g"] < n_train and box[0] + 60 < p["x"] < box[2] - 60
                 and box[1] + 60 < p["y"] < box[3] - 60]
    anchor = train_pts[len(train_pts) // 2]
    x0, y0, x1, y1 = anchor["x"] - 40, anchor["y"] - 40, anchor["x"] + 40, anchor["y"] + 40
    maybe = {i for s, i in _inside(pts, n_train, (x0, y0, x1, y1), 3) if s == "train"}
    _drag_select(page, "lasso", [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0 + 2)])
    send = page.locator("button:has-text('training samples to review')")
    send.wait_for(timeout=15_000)
    _settle(page, "button:has-text('training samples to review')")
    n = int(re.search(r"Send ([\d,]+)", send.inner_text()).group(1).replace(",", ""))
    assert 1 <= n <= len(maybe)
    send.click()
    _settle(page, "h2:has-text('Review suspected mislabels')")
    page.get_by_label("Your name (recorded with every decision)").fill("lasso")
    page.get_by_role("button", name="Start reviewing").click()
    _settle(page, "h3:has-text('Training sample #')")
    assert page.get_by_text(f"Queue limited to the {n:,} training samples").count() == 1
    head = page.locator("h3:has-text('Training sample #')").inner_text()
    first = int(re.search(r"#(\d+)", head).group(1))
    assert first in maybe and f"of {n} in queue" in head.replace(",", ""), (first, head)
    assert "reviewer=lasso" in page.url  # remembered: a reload does not ask again
    page.reload()
    _settle(page, "h3:has-text('Training sample #')")


def test_review_scrolls_to_the_top_after_a_keyboard_decision(server: str, digits_run: Path, page):  # noqa: F811
    from explorer.annotations import db_path

    db = db_path(digits_run.parent, digits_run.name)
    try:
        page.set_viewport_size({"width": 1280, "height": 720})
        page.goto(f"{server}/review?run=digits&reviewer=scroller")  # the name comes from the URL
        _settle(page, "h3:has-text('Training sample #')")
        head = page.locator("h3:has-text('Training sample #')")
        before = head.inner_text()
        page.get_by_text("Export / import decisions").scroll_into_view_if_needed()
        assert not _in_view(page, head)
        page.locator("button:has-text('Keep (K)')").wait_for(timeout=30_000)  # its shortcut is registered
        page.mouse.move(5, 700)  # focus stays on the page, not in a widget
        page.keyboard.press("k")
        page.wait_for_function("(b) => { const h = Array.from(document.querySelectorAll('h3')).find(e => "
                               "e.textContent.includes('Training sample #')); return h && h.textContent !== b; }",
                               arg=before, timeout=45_000)
        _settle(page, "h3:has-text('Training sample #')")
        page.wait_for_function("() => { const h = Array.from(document.querySelectorAll('h3')).find(e => "
                               "e.textContent.includes('Training sample #')); const r = h.getBoundingClientRect();"
                               " return r.top >= 0 && r.bottom <= window.innerHeight; }", timeout=5_000)
        assert _in_view(page, head)
    finally:
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            p.unlink(missing_ok=True)


def _in_view(pg, locator) -> bool:
    b = locator.bounding_box()
    vp = pg.viewport_size
    return b is not None and b["y"] >= 0 and b["y"] + b["height"] <= vp["height"] and b["x"] + b["width"] <= vp["width"]


def _contrast(fg: str, bg: str) -> float:
    """WCAG contrast of two computed CSS colours ('rgb(r, g, b)'), computed here independently."""
    def lum(css: str) -> float:
        r, g, b = (int(x) / 255 for x in re.findall(r"\d+", css)[:3])
        lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    hi, lo = sorted((lum(fg), lum(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_presenter_mode_fits_the_top_cards_on_a_projector(server: str, browser, tmp_path: Path):  # noqa: F811
    """``?present=1`` at 1280x720: no Streamlit chrome, the top 4 + 4 cards inside the viewport
    without scrolling, every class chip readable (contrast >= 4.5:1 from the computed colours)."""
    shots = Path(os.environ.get("INFLUENCE_EXPLORER_SCREENSHOTS") or tmp_path)
    shots = shots if shots.is_absolute() else ROOT / shots
    pg = browser.new_page(viewport={"width": 1280, "height": 720})
    try:
        pg.goto(f"{server}/influence?run=digits&test=42&method=exact&present=1")
        _settle(pg, "h1:has-text('Test #42')")
        pg.wait_for_function("() => Array.from(document.querySelectorAll(\"img[alt^='train #']\"))"
                             ".filter(i => i.naturalWidth > 0).length >= 8", timeout=30_000)
        pg.wait_for_function("() => { const h = document.querySelector('[data-testid=stHeader]');"
                             " return !h || getComputedStyle(h).display === 'none'; }", timeout=15_000)
        assert pg.locator("[data-testid=stHeader]").is_hidden()
        cards = pg.locator("div[class*='st-key-iecard_']")
        assert cards.count() == 8
        for i in range(8):
            assert _in_view(pg, cards.nth(i)), (i, cards.nth(i).bounding_box())
        chips = pg.locator(".ie-chip").evaluate_all(
            "els => els.map(e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor, e.textContent])")
        assert len(chips) >= 8 + 2
        low = [(c, round(_contrast(c[0], c[1]), 2)) for c in chips if _contrast(c[0], c[1]) < 4.5]
        assert not low, low
        body = pg.evaluate("() => parseFloat(getComputedStyle(document.documentElement).fontSize)")
        assert body >= 20
        shots.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(shots / "presenter.png"))
    finally:
        pg.close()
