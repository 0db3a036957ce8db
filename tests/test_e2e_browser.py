"""End to end in a real browser: Debian's chromium driven by playwright against ``streamlit run``.

Starts the app on a free port over the session's digits run, clicks a test prediction and checks
that the cached proponents appear. Screenshots of every page go to a temporary folder, or to
``docs/screenshots/`` (the README's) with ``INFLUENCE_EXPLORER_SCREENSHOTS=docs/screenshots``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from explorer.cache import RunCache

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


@pytest.fixture
def server(digits_run: Path, tmp_path: Path) -> Iterator[str]:
    """``streamlit run explorer/app.py`` on a free port; yields its base URL once healthy."""
    port = _free_port()
    env = {**os.environ, "INFLUENCE_EXPLORER_CACHE": str(digits_run.parent)}
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "explorer" / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("streamlit did not start:\n" + (tmp_path / "streamlit.log").read_text()[-3000:])
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _settle(page, selector: str) -> None:
    """Wait for ``selector``, then for the script run to finish (no 'Running...' widget)."""
    page.wait_for_selector(selector, timeout=30_000)
    page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=30_000)
    assert page.locator("[data-testid=stException]").count() == 0, page.locator("[data-testid=stException]").first.inner_text()


def test_click_prediction_shows_proponents(server: str, digits_run: Path, tmp_path: Path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("INFLUENCE_EXPLORER_SCREENSHOTS") or tmp_path)
    shots = shots if shots.is_absolute() else ROOT / shots
    shots.mkdir(parents=True, exist_ok=True)
    run = RunCache(digits_run)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(f"{server}/runs")
        _settle(page, "text=Test accuracy")
        page.screenshot(path=str(shots / "runs.png"))

        page.goto(f"{server}/predictions?run=digits")
        _settle(page, "button:has-text('test #')")
        page.screenshot(path=str(shots / "predictions.png"))
        first = page.locator("button:has-text('test #')").first
        test = int(first.inner_text().split("#")[1])
        first.click()
        _settle(page, f"h1:has-text('Test #{test}')")
        # the proponent cards show exactly the cached top-k, images included
        want = run.method_array(run.methods[0], "top_proponents")[test, :8].tolist()
        alts = page.locator("img[alt^='train #']").evaluate_all("els => els.map(e => e.alt)")
        shown = [int(a.split("#")[1]) for a in alts]
        assert shown[:8] == want, (shown, want)
        loaded = page.locator("img[alt^='train #']").evaluate_all("els => els.filter(e => e.naturalWidth > 0).length")
        assert loaded >= 16  # proponents and opponents rendered
        assert f"test={test}" in page.url
        page.screenshot(path=str(shots / "influence.png"))

        page.locator(f"button:has-text('train #{want[0]}')").first.click()
        _settle(page, f"h1:has-text('Training sample #{want[0]}')")
        page.mouse.move(700, 500)
        page.mouse.wheel(0, -5000)
        page.wait_for_timeout(300)
        page.screenshot(path=str(shots / "training_sample.png"))

        page.goto(f"{server}/embedding?run=digits&test={test}&color=influence")
        _settle(page, "[data-testid=stPlotlyChart] .main-svg")
        page.wait_for_timeout(800)
        page.screenshot(path=str(shots / "embedding.png"))

        page.goto(f"{server}/compare?run=digits&test={test}")
        _settle(page, "text=Rank correlation")
        page.wait_for_timeout(500)
        page.screenshot(path=str(shots / "compare.png"))
        browser.close()
    assert (shots / "influence.png").stat().st_size > 10_000
