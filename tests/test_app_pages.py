"""Every page the app declares (``explorer/app_pages/*.py``) under streamlit.testing's AppTest, on the
session's digits run: with nothing selected, with a selection, with a bad run name and with bad
values; plus the page contract itself (``PageSpec``, declared URL parameters, menu order).

The pages are discovered from their declarations, so a new page is exercised here as soon as it
exists; it fails until its expected text is added to ``EXPECTED`` below.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer import page_spec, state
from explorer.page_spec import PageSpec

APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")
PAGES = page_spec.discover()
BY_KEY = {p.spec.key: p for p in PAGES}
MENU = ["runs", "predictions", "influence", "embedding", "compare", "review", "trust", "tour"]

SELECTION = {"test": "42", "train": "7"}
BAD_VALUES = {"test": "abc", "train": "-3", "method": "nonexistent", "k": "abc", "color": "nope", "a": "x",
              "b": "../y"}
BAD_RUN = "../../etc"
#: per page: (text with nothing selected, text with SELECTION), each a fragment of a heading or message
EXPECTED: dict[str, tuple[str, str]] = {
    "runs": ("Influence Explorer", "Influence Explorer"),
    "predictions": ("Test predictions", "Selected: test #42"),
    "influence": ("Test #", "Training sample #7: which predictions does it drive?"),
    "embedding": ("Embedding map", "Selected: test #42, train #7"),
    "compare": ("Compare methods on test #", "Compare methods on test #42"),
    "review": ("Review suspected mislabels", "Review suspected mislabels"),
    "trust": ("Trust", "Trust"),
    "tour": ("Tour: striking examples", "Tour: striking examples"),
}
#: pages that do not open a run (their text with a bad ``?run=``); every other one explains the name
NO_RUN_NEEDED = {"runs": "Influence Explorer"}


@pytest.fixture
def open_page(digits_run: Path, monkeypatch):
    """``open_page(key, **params)``: a fresh session on ``/?page=<key>&...`` over the digits run's cache."""
    monkeypatch.setenv(state.CACHE_ENV, str(digits_run.parent))

    def run(key: str, **params: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        at.query_params.update({"page": key, **params})
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at
    return run


def _text(at: AppTest) -> str:
    """Every heading, message and code block of the page, one per line."""
    kinds = ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success", "code")
    return "\n".join(str(e.value) for kind in kinds for e in at.get(kind))


def _expected(key: str) -> tuple[str, str]:
    if key not in EXPECTED:
        pytest.fail(f"page {key!r} has no expected text: add it to EXPECTED in {Path(__file__).name}")
    return EXPECTED[key]


def _only(key: str, values: dict[str, str]) -> dict[str, str]:
    """The parameters of ``values`` that page ``key`` declares."""
    return {k: v for k, v in values.items() if k in BY_KEY[key].spec.params}


@pytest.mark.parametrize("key", list(BY_KEY))
def test_page_with_nothing_selected(open_page, key: str):
    at = open_page(key)
    assert _expected(key)[0] in _text(at)


@pytest.mark.parametrize("key", list(BY_KEY))
def test_page_with_a_selection(open_page, key: str):
    at = open_page(key, run="digits", **_only(key, SELECTION))
    assert _expected(key)[1] in _text(at)
    assert at.query_params["run"] == "digits"


@pytest.mark.parametrize("key", list(BY_KEY))
def test_page_with_a_bad_run_name(open_page, key: str):
    at = open_page(key, run=BAD_RUN, **_only(key, BAD_VALUES))
    text = _text(at)
    if key in NO_RUN_NEEDED:
        assert NO_RUN_NEEDED[key] in text
    else:  # the friendly page, never a path outside the cache
        assert at.title[0].value == "That is not a run name" and BAD_RUN in text
        assert "/etc" not in " ".join(c.value for c in at.code)


@pytest.mark.parametrize("key", list(BY_KEY))
def test_page_with_bad_values(open_page, key: str):
    bad = _only(key, BAD_VALUES)
    at = open_page(key, run="digits", **bad)
    assert _expected(key)[0] in _text(at)
    warnings = " ".join(w.value for w in at.warning)
    for param, value in bad.items():  # every bad value is named, and left in the URL (no silent change)
        assert f"{param}={value}" in warnings, (param, warnings)
        assert at.query_params[param] == value


def test_unknown_page_parameter_falls_back_to_the_landing_rule(open_page):
    at = open_page("no-such-page", run="digits")
    assert at.title[0].value == "Test predictions"


# --- the contract -------------------------------------------------------------------------------

def test_menu_order_and_keys():
    """The menu keeps its order; a page lives in ``app_pages/<key>.py`` and its key is its URL path."""
    assert [p.spec.key for p in PAGES] == MENU
    for p in PAGES:
        assert p.module == f"explorer.app_pages.{p.spec.key}" and callable(p.main)
        assert p.spec.title and p.spec.icon.startswith(":material/") and "run" in p.spec.params


def test_declared_params_are_the_urls_state():
    """``state.PARAMS`` (kept across page switches) is exactly what the pages declare, plus the
    parameters every page keeps (``state.GLOBAL``: presenter mode)."""
    assert page_spec.declared_params(PAGES) | set(state.GLOBAL) == set(state.PARAMS)
    page_spec.check_params(PAGES, state.PARAMS)
    with pytest.raises(ValueError, match="'zoom'"):
        page_spec.check_params([page_spec.Page(PageSpec("x", "X", "", 1, ("zoom",)), lambda: None, "m")],
                               state.PARAMS)


def test_discover_rejects_pages_without_a_contract(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_pages_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    spec = "from explorer.page_spec import PageSpec\nPAGE = PageSpec(key={k!r}, title='T', icon='', order={o})\n"
    (pkg / "one.py").write_text(spec.format(k="one", o=1) + "def main():\n    pass\n")
    (pkg / "_helper.py").write_text("X = 1\n")  # private modules are not pages
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [p.spec.key for p in page_spec.discover("fake_pages_pkg")] == ["one"]
    (pkg / "two.py").write_text(spec.format(k="one", o=2) + "def main():\n    pass\n")
    importlib.invalidate_caches()
    with pytest.raises(ValueError, match="share the key 'one'"):
        page_spec.discover("fake_pages_pkg")
    (pkg / "two.py").write_text(spec.format(k="two", o=2))  # no main()
    for m in [m for m in sys.modules if m.startswith("fake_pages_pkg.")]:
        del sys.modules[m]
    importlib.invalidate_caches()
    with pytest.raises(TypeError, match="fake_pages_pkg.two"):
        page_spec.discover("fake_pages_pkg")
