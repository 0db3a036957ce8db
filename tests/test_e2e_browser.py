"""End to end in a real browser: Debian's chromium driven by playwright against ``streamlit run``.

Starts the app on a free port over the session's digits run, clicks a test prediction and checks
that the cached proponents appear. Screenshots of every page go to a temporary folder, or to
``docs/screenshots/`` (the README's) with ``INFLUENCE_EXPLORER_SCREENSHOTS=docs/screenshots``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import serving

from cache_format.runs import RunCache

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.slow


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:  # fail, never skip: CI installs it (apt-get install -y chromium)
        pytest.fail("Debian chromium is required for the browser test: apt-get install -y chromium")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``streamlit run explorer/app.py`` on a free port (one per module); yields its base URL once healthy."""
    tmp_path = tmp_path_factory.mktemp("streamlit")
    port = _free_port()
    env = {**os.environ, "INFLUENCE_EXPLORER_CACHE": str(digits_run.parent)}
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "explorer" / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with serving(proc, port, tmp_path / "streamlit.log") as base:
            yield base
    finally:
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium under playwright, one per module (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser) -> Iterator[Any]:
    pg = browser.new_page(viewport={"width": 1440, "height": 1000})
    yield pg
    pg.close()


def _settle(page, selector: str) -> None:
    """Wait for ``selector``, then for the script run to finish (no 'Running...' widget)."""
    page.wait_for_selector(selector, timeout=30_000)
    page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=30_000)
    assert page.locator("[data-testid=stException]").count() == 0, page.locator("[data-testid=stException]").first.inner_text()


#: the class-probability bars of the influence header (HTML, components/prob_bars.py)
_BARS_DRAWN = "() => document.querySelectorAll('.ie-probs .ie-prob-bar').length > 0"
#: a gallery card's page link (its label 'test #<id>'; the whole card is the link)
GALLERY_CARD = "[data-testid=stPageLink-NavLink]:has-text('test #')"


def test_page_urls_work_as_the_first_request(server: str, page):
    """The server's very first request is a page URL (no legacy ``pages/`` folder can hijack it), and
    the menu built from the pages' declarations keeps its order; review and trust render too."""
    page.goto(f"{server}/influence?run=digits&test=42")
    _settle(page, "h1:has-text('Test #42')")
    assert page.get_by_text("Page not found").count() == 0 and "test=42" in page.url
    menu = [t.split("\n")[-1].strip() for t in page.locator("[data-testid=stTopNavLink]").all_inner_texts()]
    assert menu[:7] == ["Runs", "Predictions", "Influence", "Embedding map", "Compare methods",
                        "Suspected mislabels", "Trust"], menu
    page.goto(f"{server}/review?run=digits")
    _settle(page, "h2:has-text('Review suspected mislabels')")
    page.goto(f"{server}/trust?run=digits")
    _settle(page, "h1:has-text('Trust')")
    page.goto(f"{server}/predictions?run=../../etc")
    _settle(page, "h1:has-text('That is not a run name')")


def test_click_prediction_shows_proponents(server: str, digits_run: Path, page, tmp_path: Path, request):
    shots_env = os.environ.get("INFLUENCE_EXPLORER_SCREENSHOTS")
    shots = Path(shots_env or tmp_path)
    shots = shots if shots.is_absolute() else ROOT / shots
    shots.mkdir(parents=True, exist_ok=True)
    if shots_env:  # the README's set also shows the review page, which needs the noisy sample run
        noisy: Path | None = request.getfixturevalue("noisy_run")
        assert noisy.parent == digits_run.parent  # same cache folder: the running server sees it
    else:
        noisy = None
    run = RunCache(digits_run)
    page.goto(f"{server}/")
    _settle(page, "text=Test accuracy")
    assert page.get_by_text("Page not found").count() == 0
    page.screenshot(path=str(shots / "runs.png"))

    page.goto(f"{server}/predictions?run=digits")
    _settle(page, GALLERY_CARD)
    page.screenshot(path=str(shots / "predictions.png"))
    first = page.locator(GALLERY_CARD).first
    test = int(first.inner_text().split("#")[1])
    first.click()
    _settle(page, f"h1:has-text('Test #{test}')")
    assert page.url.split("?")[0].endswith("/influence")
    page.wait_for_function("() => document.querySelectorAll(\"img[alt^='train #']\").length >= 16", timeout=30_000)
    # the proponent cards show exactly the cached top-k, images included
    want = run.method_array(run.methods[0], "top_proponents")[test, :8].tolist()
    alts = page.locator("img[alt^='train #']").evaluate_all("els => els.map(e => e.alt)")
    shown = [int(a.split("#")[1]) for a in alts]
    assert shown[:8] == want, (shown, want)
    loaded = page.locator("img[alt^='train #']").evaluate_all("els => els.filter(e => e.naturalWidth > 0).length")
    assert loaded >= 16  # proponents and opponents rendered
    assert f"test={test}" in page.url
    page.wait_for_function(_BARS_DRAWN, timeout=15_000)
    page.screenshot(path=str(shots / "influence.png"))

    page.locator(f"button:has-text('train #{want[0]}')").first.click()
    _settle(page, f"h1:has-text('Training sample #{want[0]}')")
    assert f"train={want[0]}" in page.url
    page.goto(page.url)  # the same view from the top of the page, for the screenshot
    _settle(page, f"h1:has-text('Training sample #{want[0]}')")
    page.wait_for_function(_BARS_DRAWN, timeout=15_000)
    page.screenshot(path=str(shots / "training_sample.png"))

    page.goto(f"{server}/embedding?run=digits&test={test}&color=influence")
    _settle(page, "[data-testid=stPlotlyChart] .main-svg")
    page.wait_for_function(_GL_DRAWN, timeout=15_000)
    page.screenshot(path=str(shots / "embedding.png"))

    page.goto(f"{server}/compare?run=digits&test={test}")
    _settle(page, "text=Rank correlation")
    page.wait_for_function(_GL_DRAWN, timeout=15_000)
    page.screenshot(path=str(shots / "compare.png"))
    assert (shots / "influence.png").stat().st_size > 10_000

    page.goto(f"{server}/tour?run=digits")  # the presenter's tour, chosen in precompute; opens its examples
    _settle(page, "h1:has-text('Tour: striking examples')")
    page.screenshot(path=str(shots / "tour.png"))
    page.locator("button:has-text('→')").first.click()
    _settle(page, "h1:has-text('#')")
    assert "/influence" in page.url or "/compare" in page.url, page.url

    if noisy is not None:
        page.goto(f"{server}/review?run={noisy.name}")
        _settle(page, "h2:has-text('Review suspected mislabels')")
        page.get_by_label("Your name (recorded with every decision)").fill("screenshot")
        page.get_by_role("button", name="Start reviewing").click()
        _settle(page, "h3:has-text('Training sample #')")
        page.mouse.move(5, 990)
        page.wait_for_function("() => Array.from(document.querySelectorAll('[data-testid=stMain] img'))"
                               ".filter(i => i.naturalWidth > 0).length >= 6", timeout=15_000)
        page.screenshot(path=str(shots / "review.png"))


# --- the embedding map: real mouse clicks and drags on the WebGL scatter ------------------------

_GL_DRAWN = "() => { const gd = document.querySelector('[data-testid=stPlotlyChart] .js-plotly-plot'); " \
            "return !!(gd && gd._fullLayout && gd._fullLayout._plots && gd.querySelector('canvas')); }"

# Every marker of the map in viewport pixels, with its global id (customdata[0]) and split, from
# the figure plotly actually drew: the axes' data -> pixel mapping of the plot area.
_POINTS = """() => {
  const gd = document.querySelector('[data-testid=stPlotlyChart] .js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
  const pts = [];
  gd._fullData.forEach(d => {
    if (!d.visible || !d.customdata || !String(d.mode).includes('markers')) return;
    for (let i = 0; i < d.x.length; i++) {
      pts.push({x: r.left + xa.l2p(d.x[i]), y: r.top + ya.l2p(d.y[i]), g: Number(d.customdata[i][0]),
                idx: Number(d.customdata[i][1]), name: d.name});
    }
  });
  return {pts, box: [r.left, r.top, r.right, r.bottom]};
}"""


def _map(page) -> tuple[list[dict], list[float]]:
    page.locator("[data-testid=stPlotlyChart]").scroll_into_view_if_needed()
    page.wait_for_function(_GL_DRAWN, timeout=15_000)
    got = page.evaluate(_POINTS)
    return got["pts"], got["box"]


def _isolated(pts: list[dict], box: list[float], n_train: int, split: str) -> dict:
    """The point of ``split`` farthest from any other marker (the easiest one to hit)."""
    import numpy as np

    xy = np.array([[p["x"], p["y"]] for p in pts])
    d = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    dup = np.array([p["g"] for p in pts])
    d[dup[:, None] == dup[None, :]] = np.inf  # the same sample drawn twice (overlay) is not a neighbour
    gap = d.min(1)
    inside = (xy[:, 0] > box[0] + 15) & (xy[:, 0] < box[2] - 15) & (xy[:, 1] > box[1] + 15) & (xy[:, 1] < box[3] - 15)
    ok = inside & ((dup >= n_train) == (split == "test"))
    best = int(np.argmax(np.where(ok, gap, -1.0)))
    assert ok[best], f"no {split} point inside the plot"
    return pts[best]


def _click(page, pt: dict) -> tuple[str, int]:
    """Hover ``pt`` as a user does, read plotly's hover label ('train #12 ...'), click; return (split, index)."""
    label = page.locator("[data-testid=stPlotlyChart] .hoverlayer .hovertext").first
    page.mouse.move(5, 5)  # off the chart: no stale label from an earlier hover
    label.wait_for(state="detached", timeout=5_000)
    page.mouse.move(pt["x"], pt["y"])
    label.wait_for(timeout=5_000)
    m = re.search(r"(train|test) #(\d+)", label.text_content() or "")
    assert m, label.text_content()
    page.mouse.click(pt["x"], pt["y"])
    return m.group(1), int(m.group(2))


def test_map_click_selects_the_point(server: str, digits_run: Path, page):
    n_train = RunCache(digits_run).n_train
    page.goto(f"{server}/embedding?run=digits")
    _settle(page, "[data-testid=stPlotlyChart] .main-svg")
    pts, box = _map(page)
    split, train = _click(page, _isolated(pts, box, n_train, "train"))
    assert split == "train"
    page.wait_for_url(re.compile(rf"[?&]train={train}(&|$)"), timeout=15_000)
    _settle(page, f"button:has-text('Open train #{train}')")
    assert page.get_by_text(f"Selected: train #{train}").count() == 1

    pts, box = _map(page)
    split, test = _click(page, _isolated(pts, box, n_train, "test"))
    assert split == "test"
    page.wait_for_url(re.compile(rf"[?&]test={test}(&|$)"), timeout=15_000)
    _settle(page, f"button:has-text('Open test #{test}')")
    # the overlay now marks the clicked test point with the star (its own small trace)
    pts, _ = _map(page)
    assert [p["g"] for p in pts if p["name"] == "selected"] == [n_train + test]
    page.locator(f"button:has-text('Open test #{test}')").click()
    _settle(page, f"h1:has-text('Test #{test}')")


_LISTED = """() => {
  const cells = Array.from(document.querySelectorAll('[data-testid=stDataFrame] [data-testid^=glide-cell-]'));
  const at = Object.fromEntries(cells.map(e => [e.dataset.testid, e.textContent]));
  const rows = [...new Set(cells.map(e => e.dataset.testid.split('-').pop()))];
  return rows.filter(r => at['glide-cell-3-' + r] !== undefined).map(r => at['glide-cell-2-' + r] + ':' + at['glide-cell-3-' + r]);
}"""  # column 0 is the row picker (a row opens its sample), 1 the image, 2 the split, 3 the index


def _listed(page, expected: set[tuple[str, int]]) -> list[tuple[str, int]]:
    """(split, index) of the listing rows the data grid rendered (its accessible cells), once they are
    all among ``expected`` (the grid redraws a moment after the new selection's heading)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    want = [f"{s}:{i}" for s, i in expected]
    try:
        page.wait_for_function(f"(want) => {{ const got = ({_LISTED})(); "
                               "return got.length > 0 && got.every(r => want.includes(r)); }", arg=want, timeout=10_000)
    except PlaywrightTimeout:  # fall through: the assertion below shows what the grid lists
        pass
    return [(r.split(":")[0], int(r.split(":")[1])) for r in page.evaluate(_LISTED)]


def _drag_select(page, tool: str, path: list[tuple[float, float]]) -> None:
    # a corner of the plot shows the toolbar; its centre may be under an earlier selection's outline
    page.hover("[data-testid=stPlotlyChart] .nsewdrag", position={"x": 4, "y": 4}, force=True)
    page.locator(f"[data-testid=stPlotlyChart] .modebar-btn[data-val='{tool}']").click()
    assert page.evaluate("() => document.querySelector('[data-testid=stPlotlyChart] .js-plotly-plot')"
                         "._fullLayout.dragmode") == tool
    page.mouse.move(*path[0])
    page.mouse.down()
    for x, y in path[1:]:
        page.mouse.move(x, y, steps=6)
    page.mouse.up()


def _inside(pts: list[dict], n_train: int, rect: tuple[float, float, float, float], pad: float) -> set[tuple[str, int]]:
    """(split, index) of the markers inside ``rect`` grown by ``pad`` pixels (shrunk if negative)."""
    x0, y0, x1, y1 = rect
    return {("test" if p["g"] >= n_train else "train", p["idx"]) for p in pts
            if x0 - pad < p["x"] < x1 + pad and y0 - pad < p["y"] < y1 + pad}


def test_map_box_and_lasso_list_the_chosen_samples(server: str, digits_run: Path, page):
    n_train = RunCache(digits_run).n_train
    page.goto(f"{server}/embedding?run=digits")
    _settle(page, "[data-testid=stPlotlyChart] .main-svg")
    pts, box = _map(page)
    heading = "[data-testid=stHeading]:has-text('selected:')"
    # two far-apart spots: the box around one, the lasso around the other (so the listings differ)
    first = _isolated(pts, box, n_train, "train")
    inner = [p for p in pts if box[0] + 60 < p["x"] < box[2] - 60 and box[1] + 60 < p["y"] < box[3] - 60]
    second = max(inner, key=lambda p: (p["x"] - first["x"]) ** 2 + (p["y"] - first["y"]) ** 2)
    before: set[tuple[str, int]] = set()
    for tool, anchor in (("select", first), ("lasso", second)):
        rect = x0, y0, x1, y1 = anchor["x"] - 45, anchor["y"] - 45, anchor["x"] + 45, anchor["y"] + 45
        sure, maybe = _inside(pts, n_train, rect, -3), _inside(pts, n_train, rect, 3)
        assert len(sure) >= 1 and not maybe & before
        before = maybe
        path = [(x0, y0), (x1, y1)] if tool == "select" else [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0 + 2)]
        _drag_select(page, tool, path)
        page.wait_for_function(
            f"() => {{ const h = Array.from(document.querySelectorAll('[data-testid=stHeading]')).find(e => "
            f"e.textContent.includes('selected:')); const n = h && parseInt(h.textContent.replace(/,/g, ''));"
            f" return n >= {len(sure)} && n <= {len(maybe)}; }}", timeout=15_000)
        _settle(page, heading)
        text = page.locator(heading).inner_text()
        n, n_tr, n_te = (int(t.replace(",", "")) for t in re.findall(r"\d[\d,]*", text)[:3])
        assert n == n_tr + n_te and len(sure) <= n <= len(maybe), (tool, text, len(sure), len(maybe))
        page.locator("[data-testid=stDataFrame]").scroll_into_view_if_needed()
        listed = _listed(page, maybe)
        assert listed and set(listed) <= maybe, (tool, sorted(set(listed) - maybe), len(listed), text)


