"""A hostile user in a real browser: Debian's chromium (playwright) against ``influence-explorer app``
(the real entry point, with its flags) over damaged and markup-laden runs from tests/hostile_caches.py.

Markup in labels must fetch nothing and render as text; a damaged run gets the friendly page; no
traceback or server source path reaches the browser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import serving
from test_e2e_browser import _free_port, _settle, browser, page  # noqa: F401  (fixtures, shared)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hostile_server(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``influence-explorer app --headless`` (the real entry point and its flags) over a cache folder
    holding the "markdown" and "truncated-scores" variants of tests/hostile_caches.py."""
    from hostile_caches import make_hostile_caches

    tmp = tmp_path_factory.mktemp("hostile_browser")
    cache = tmp / "cache"
    cache.mkdir()
    for name, run in make_hostile_caches(digits_run, tmp / "made", only=["markdown", "truncated-scores"]).items():
        shutil.move(str(run), str(cache / name))
    port = _free_port()
    script = Path(sys.executable).parent / "influence-explorer"
    log = open(tmp / "app.log", "w")
    proc = subprocess.Popen([str(script), "app", "--headless", "--port", str(port), "--cache-dir", str(cache)],
                            cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none"})
    try:
        with serving(proc, port, tmp / "app.log") as base:
            yield base
    finally:
        log.close()


def test_hostile_runs_in_a_real_browser(hostile_server: str, page):  # noqa: F811 (the shared fixture)
    """Markup in labels fetches nothing and renders as text; a damaged run gets the friendly page;
    no traceback or server source path reaches the browser."""
    from hostile_caches import MARKDOWN_DATASET

    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    page.goto(f"{hostile_server}/")
    _settle(page, "text=Runs that cannot be opened")
    body = page.locator("body").inner_text().replace("\u2060", "")  # the word joiner that stops autolinks
    assert MARKDOWN_DATASET.replace("  ", " ") in body  # the dataset name, as its characters
    assert "truncated-scores/methods/exact/scores.npy is" in body
    for path in ("predictions", "influence", "embedding", "compare", "review", "trust"):
        page.goto(f"{hostile_server}/{path}?run=markdown&test=42")
        _settle(page, "h1, h2")
        page.goto(f"{hostile_server}/{path}?run=truncated-scores&test=42")
        _settle(page, "h1:has-text('This run is damaged')")
        text = page.locator("body").inner_text()
        assert "scores.npy" in text and "--name truncated-scores --overwrite" in text
        assert "Traceback" not in text and "site-packages" not in text and ".py\"" not in text
    page.goto(f"{hostile_server}/influence?run=markdown&test=42")
    _settle(page, "h1:has-text('Test #42')")
    title = page.locator("h1").first.inner_text()
    assert any(label in title for label in ("![", "<", "**", ":red[", "$", "`", "[link]")), title  # shown as text
    assert page.locator("[data-testid=stMain] img:not([src^='data:'])").count() == 0
    assert not [u for u in requested if "host.invalid" in u], requested
