"""Markdown injection: strings from a cache, a URL or a reviewer render as text on every page.

The "markdown" hostile run (tests/hostile_caches.py) has class names like ``![x](http://host/x.png)``
and ``<img src=...>``, a dataset, model, mislabel method and sample paths with markup; the URL and
the reviewer's name carry more. Every string each page sends to the browser (markdown bodies,
captions, titles, messages, widget labels and tooltips, image captions, plotly text) is scanned:
no image or link syntax, no HTML tag but the app's own, and the escaped label is shown.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict
from hostile_caches import (
    HOST,
    MARKDOWN_DATASET,
    MARKDOWN_LABELS,
    MARKDOWN_METHOD,
    make_hostile_caches,
)
from streamlit.testing.v1 import AppTest

from cache_format.mislabels import load_mislabels
from cache_format.runs import RunCache
from explorer import page_spec, state
from explorer.annotations import AnnotationStore, db_path
from explorer.text import md_code, md_escape

APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")
PAGES = [p.spec.key for p in page_spec.discover()]
REVIEWER = f"![r]({HOST}/r.png) <b>ann</b>"
URL = {"test": f"![t]({HOST}/t.png)", "train": "<img src=x>", "method": f"<img src={HOST}/m.png>",
       "a": f"![a]({HOST}/a.png)", "k": "<b>5</b>", "color": "[c](http://x/)"}
#: the app's own HTML: coloured chips, cards, the large image (a data URI) and one style block
_ALLOWED_TAG = re.compile(r'<(span|div|style|b)\b|<img (class="ie-img" )?src="data:image/png;base64,')
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
#: plain-text fields (a selectbox's options are not markdown), and binary payloads
_PLAIN = {("selectbox", "options"), ("multiselect", "options"), ("selectbox", "rawValue"),
          ("multiselect", "rawValues"), ("selectbox", "default"), ("multiselect", "default")}
_SKIP_TYPES = {"arrow_data_frame", "arrow_table", "dataframe", "code"}  # tables and code show text verbatim
_HOSTILE = [s for s in (*MARKDOWN_LABELS, MARKDOWN_DATASET, MARKDOWN_METHOD, REVIEWER, *URL.values())]


@pytest.fixture(scope="module")
def md_run(digits_run: Path, tmp_path_factory) -> Path:
    """The markdown variant alone in its cache folder."""
    return make_hostile_caches(digits_run, tmp_path_factory.mktemp("markdown"), only=["markdown"])["markdown"]


def _strings(at: AppTest) -> Iterator[tuple[str, str, str]]:
    """(element type, field, string) for every string of every element on the page."""
    nodes = [*at.main, *at.sidebar, *at.toast]
    for node in nodes:
        proto = getattr(node, "proto", None)
        kind = getattr(node, "type", "")
        if proto is None or kind in _SKIP_TYPES:
            continue
        yield from _walk(kind, "", MessageToDict(proto))


def _walk(kind: str, field: str, value) -> Iterator[tuple[str, str, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            if (kind, k) not in _PLAIN and k not in ("data", "bytes"):
                yield from _walk(kind, k, v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(kind, field, v)
    elif isinstance(value, str):
        yield kind, field, value


def _unsafe(kind: str, field: str, s: str) -> str | None:
    """Why string ``s`` would render as markup (``None`` when it is safe)."""
    if kind == "plotly_chart" and field == "spec":
        texts = json.dumps(json.loads(s))
        bad = re.search(r"<(img|script|a|b|iframe)[\s>]", texts)
        return f"plotly text has {bad.group(0)!r}" if bad else None
    s = _CODE_SPAN.sub("", s)  # inline code shows its text verbatim
    for raw in _HOSTILE:
        flat = re.sub(r"\s+", " ", raw)
        if flat in s or raw in s:
            return f"unescaped {raw!r}"
    if "![" in s or "](" in s:
        return "image/link syntax"
    if re.search(r"(?i)https?://|\bwww\.", html.unescape(s)):
        return "a bare URL (GitHub markdown makes it a link)"
    for m in re.finditer(r"<([a-zA-Z])", s):
        if not _ALLOWED_TAG.match(s, m.start()):
            return f"HTML tag at {s[m.start():m.start() + 30]!r}"
    return None


def _check(at: AppTest) -> str:
    """Assert that nothing on the page would render as markup; returns its text (plotly's decoded)."""
    assert not at.exception, [e.value for e in at.exception]
    bad = [(k, f, why, s[:120]) for k, f, s in _strings(at) if (why := _unsafe(k, f, s))]
    assert not bad, bad
    return "\n".join(json.dumps(json.loads(s), ensure_ascii=False) if f == "spec" else s
                     for _k, f, s in _strings(at))


def _open(md_run: Path, monkeypatch, page: str, **params: str) -> AppTest:
    monkeypatch.setenv(state.CACHE_ENV, str(md_run.parent))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"page": page, **params})
    at.session_state["reviewer"] = REVIEWER
    at.session_state["review_method"] = MARKDOWN_METHOD
    at.run()
    return at


#: per page: an escaped string it must show (the labels are there, as text)
LABELS = [md_escape(x) for x in MARKDOWN_LABELS]
SHOWN = {"runs": [md_escape(MARKDOWN_DATASET)], "predictions": LABELS, "influence": LABELS, "compare": LABELS,
         "review": [md_escape(REVIEWER)], "embedding": ["&lt;img src=http://host.invalid/y.png&gt;"],
         "trust": ["markdown"], "tour": ["Tour: striking examples"]}


@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_hostile_strings_as_text(md_run: Path, monkeypatch, page: str):
    at = _open(md_run, monkeypatch, page, run="markdown", test="42", train="7", method="exact")
    text = _check(at)
    assert any(x in text for x in SHOWN[page]), page


@pytest.mark.parametrize("page", PAGES)
def test_hostile_url_parameters_render_as_text(md_run: Path, monkeypatch, page: str):
    at = _open(md_run, monkeypatch, page, run="markdown", **URL)
    text = _check(at)
    if page != "runs":
        assert md_escape(URL["test"]) in text  # the sidebar shows the raw selection, escaped


@pytest.mark.parametrize("page", PAGES)
def test_a_hostile_run_name_in_the_url_renders_as_text(md_run: Path, monkeypatch, page: str):
    at = _open(md_run, monkeypatch, page, run=f"![u]({HOST}/u.png)")
    _check(at)
    if page != "runs":
        assert at.title[0].value == "That is not a run name"


def test_review_decisions_and_metrics_show_markup_as_text(md_run: Path, monkeypatch):
    run = RunCache(md_run)
    data = load_mislabels(run)
    first = int(data.ranking(MARKDOWN_METHOD)["index"].iloc[0])
    with AnnotationStore(db_path(md_run.parent, "markdown"), run="markdown") as store:
        store.record(first, "relabel", 1, REVIEWER, given_label=0, created_at=f"2024 ![c]({HOST}/c.png)")
    at = _open(md_run, monkeypatch, "review", run="markdown")
    at.radio(key="review_status").set_value("all").run()
    text = _check(at)
    assert f"Training sample #{first}" in text
    assert any("Current decision" in i.value and md_escape(REVIEWER) in i.value for i in at.info)
    assert any(b.label.startswith("Accept ") for b in at.button)


def test_md_escape_and_md_code():
    for raw in (*MARKDOWN_LABELS, "1. item", "- item", "# head", "a|b", "x & y"):
        out = md_escape(raw)
        assert not re.search(r"[\[\]!<>`*$|#\n]", out.replace("&#", "")), (raw, out)
        assert "\n" not in out
    assert md_escape("digits-noisy (v2)") == "digits-noisy (v2)"  # plain names stay readable
    assert "http://" not in html.unescape(md_escape("see http://x.org or WWW.x.org"))
    assert html.unescape(md_escape("see http://x.org")).replace("\u2060", "") == "see http://x.org"
    assert md_code("a`b") == "``a`b``" and md_code("`x") == "`` `x ``" and md_code("plain") == "`plain`"
