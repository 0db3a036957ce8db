"""Every explorer page under streamlit.testing's AppTest, on the real digits sample run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cache_format.runs import RunCache

APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")


@pytest.fixture
def app(digits_run: Path, monkeypatch):
    """An AppTest on the digits run's cache folder; ``app(page, **params)`` runs it (the page is opened
    with the app's own deep link, ``/?page=<key>&...``: AppTest.switch_page only knows file pages)."""
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(digits_run.parent))

    def make(page: str | None = None, **params: object) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        for k, v in {**({"page": page} if page else {}), **params}.items():
            at.query_params[k] = str(v)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at
    return make


def _ids(at: AppTest, prefix: str) -> list[int]:
    """Sample ids of the card buttons whose key starts with ``prefix`` (keys are '<prefix>_<rank>_<id>');
    the gallery's cards ("pred") are page links labelled 'test #<id>'."""
    if prefix == "pred":
        return [int(link.value.split("#")[1]) for link in at.get("page_link") if link.value.startswith("test #")]
    return [int(b.key.rsplit("_", 1)[1]) for b in at.button if b.key and b.key.startswith(prefix + "_")]


def _chart_spec(at: AppTest, n: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[n].proto.spec)


def test_runs_page_lists_the_run(app, digits_run):
    at = app("runs")
    text = " ".join(m.value for m in at.markdown)
    assert "digits" in text and "mlp" in text
    for m in RunCache(digits_run).methods:
        assert f"`{m}`" in text
    acc = RunCache(digits_run).manifest["model"]["test_accuracy"]
    assert any(x.value == f"{acc:.1%}" for x in at.metric)
    at.button(key="open_digits").click().run()
    assert at.query_params["run"] == "digits" and at.title[0].value == "Test predictions"


def test_predictions_gallery_filters_and_click(app, digits_run):
    at = app("predictions", run="digits")
    shown = _ids(at, "pred")
    assert len(shown) == 18
    test = RunCache(digits_run).test_samples()
    conf = test.loc[shown, "confidence"].to_numpy()
    assert (np.diff(conf) >= 0).all()  # least confident first
    at.segmented_control(key="pf_outcome").set_value("Incorrect").run()
    wrong = set(test.index[~test["correct"]])
    shown = _ids(at, "pred")
    assert shown and set(shown) <= wrong
    # a card is a page link to the test point's influence view (a click is one script run in the
    # browser: tests/test_e2e_browser.py clicks it); following it opens that view
    target = shown[0]
    link = next(x for x in at.get("page_link") if x.value == f"test #{target}")
    assert link.proto.page == "influence"
    query = dict(parse_qsl(link.proto.query_string))
    assert query == {"run": "digits", "test": str(target)}
    opened = app("influence", **query)
    assert opened.query_params["test"] == str(target)
    assert opened.title[0].value.startswith(f"Test #{target}:")


def test_gallery_links_carry_the_sessions_influence_parameters(app):
    """What the card opens: the session's method, k, label to explain toward and presenter mode; the
    test point set; a selected training sample dropped (as the old card button did)."""
    at = app("predictions", run="digits", method="tracin", k="5", toward="predicted", train="3", present="1")
    links = [x for x in at.get("page_link") if x.value.startswith("test #")]
    assert len(links) == 18
    for link in links:
        query = dict(parse_qsl(link.proto.query_string))
        assert query == {"run": "digits", "test": link.value.split("#")[1], "method": "tracin", "k": "5",
                         "toward": "predicted", "present": "1"}, query


@pytest.mark.parametrize("method", ["exact", "tracin"])
def test_influence_view_shows_the_cached_topk(app, digits_run, method):
    run = RunCache(digits_run)
    at = app(None, run="digits", test=42, method=method)
    assert at.title[0].value.startswith("Test #42:")
    assert _ids(at, "pro") == run.method_array(method, "top_proponents")[42, :8].tolist()
    assert _ids(at, "opp") == run.method_array(method, "top_opponents")[42, :8].tolist()
    assert any("Sign convention" in m.value for m in at.markdown)
    # a different test point (set through the URL) shows its own proponents
    at.query_params["test"] = "7"
    at.run()
    assert _ids(at, "pro") == run.method_array(method, "top_proponents")[7, :8].tolist()
    assert _ids(at, "pro") != run.method_array(method, "top_proponents")[42, :8].tolist()
    at.slider(key="w_k").set_value(3).run()
    assert len(_ids(at, "opp")) == 3 and at.query_params["k"] == "3"


def test_card_click_opens_reverse_view(app, digits_run):
    run = RunCache(digits_run)
    at = app(None, run="digits", test=42, method="exact")
    first = _ids(at, "pro")[0]
    at.button(key=f"pro_0_{first}").click().run()
    assert not at.exception and at.query_params["train"] == str(first)
    assert at.title[0].value.startswith(f"Training sample #{first}")
    assert _ids(at, "helped") == run.method_array("exact", "train_top_helped")[first, :8].tolist()
    assert _ids(at, "hurt") == run.method_array("exact", "train_top_hurt")[first, :8].tolist()
    labels = [m.label for m in at.metric]
    assert "Self-influence" in labels and "Net influence on the test set" in labels
    net = float(run.method_array("exact", "train_net_influence")[first])
    assert at.metric[labels.index("Net influence on the test set")].value == f"{net:+.3g}"
    at.button(key="back_to_test").click().run()
    assert "train" not in at.query_params and at.title[0].value.startswith("Test #42")


def test_unknown_method_in_deep_link_falls_back_with_a_warning(app):
    at = app(None, run="digits", test=3, method="ekfac")
    assert any("ekfac" in w.value for w in at.warning)
    assert at.title[0].value.startswith("Test #3:")


def test_embedding_map_overlay_and_colouring(app, digits_run):
    run = RunCache(digits_run)
    at = app("embedding", run="digits", test=5, method="exact")
    spec = _chart_spec(at)
    star = [t for t in spec["data"] if t.get("name") == "selected"][0]
    emb = run.array("embedding")
    n_train = run.n_train
    assert star["marker"]["symbol"] == "star"
    assert star["x"][0] == pytest.approx(float(emb[n_train + 5, 0]))
    linked = [t for t in spec["data"] if t.get("name") == "top-k"][0]
    cd = linked["customdata"]
    ids = np.frombuffer(__import__("base64").b64decode(cd["bdata"]), dtype=cd["dtype"]).reshape(-1, 2)[:, 0] \
        if isinstance(cd, dict) else np.asarray(cd)[:, 0]
    top = run.method_array("exact", "top_proponents")[5, :8].tolist() + run.method_array("exact", "top_opponents")[5, :8].tolist()
    assert ids.tolist() == top
    assert sum(1 for t in spec["data"] if t.get("showlegend", True) and t.get("legendgroup")) == len(run.class_names)
    at.selectbox(key="w_color").set_value("influence").run()
    assert not at.exception
    spec = _chart_spec(at)
    assert spec["data"][0]["marker"]["cmid"] == 0 and at.query_params["color"] == "influence"


def test_compare_page_overlap_and_correlation(app, digits_run):
    run = RunCache(digits_run)
    at = app("compare", run="digits", test=11, a="exact", b="graddot")
    a = run.method_array("exact", "top_proponents")[11, :10]
    b = run.method_array("graddot", "top_proponents")[11, :10]
    shared = len(set(a.tolist()) & set(b.tolist()))
    vals = {m.label: m.value for m in at.metric}
    assert vals["Proponents shared"] == f"{shared} / 10"
    from scipy.stats import spearmanr

    rho = spearmanr(run.scores("exact")[11], run.scores("graddot")[11]).statistic
    assert vals["Rank correlation (Spearman)"] == f"{rho:+.2f}"
    assert len(at.dataframe) == 4  # proponents and opponents, two methods each
    pro_a = at.dataframe[0].value
    assert pro_a["train #"].tolist() == a.tolist()
    assert (pro_a["in graddot"] == "✓ same sign").sum() == shared


def test_missing_cache_folder_shows_help(tmp_path, monkeypatch):
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(tmp_path / "nothing-here"))
    for page in (None, "predictions", "influence"):
        at = AppTest.from_file(APP, default_timeout=60)
        if page:
            at.query_params["page"] = page
        at.run()
        assert not at.exception
        assert at.title[0].value == "No influence runs found"
        assert any("influence-explorer precompute --sample digits" in c.value for c in at.code)


def test_runs_that_cannot_be_opened_explain_the_fix(digits_run, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(digits_run, cache / "digits")
    (cache / "half").mkdir()  # an interrupted run: no manifest
    old = cache / "old"
    shutil.copytree(digits_run, old)
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 0
    (old / "manifest.json").write_text(json.dumps(m))
    (cache / "broken").mkdir()  # a manifest that reads but lacks a field every page relies on
    del m["methods"]
    m["format_version"] = json.loads((digits_run / "manifest.json").read_text())["format_version"]
    (cache / "broken" / "manifest.json").write_text(json.dumps(m))
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(cache))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert "Runs that cannot be opened" in [s.value for s in at.subheader]
    assert any("half" in w.value for w in at.warning) and any("version 0" in w.value for w in at.warning)
    assert any("'methods'" in w.value for w in at.warning)
    for run, title in (("nope", "has not been built"), ("half", "incomplete"), ("old", "different version"),
                       ("broken", "damaged")):
        at = _problem(run)
        assert title in at.title[0].value
        assert any(f"precompute --config <your-config.toml> --name {run}" in c.value for c in at.code)
    for name in ("../digits", str(cache / "digits"), ".hidden"):  # never a path: the friendly page instead
        at = _problem(name)
        assert at.title[0].value == "That is not a run name"
        assert any("is not a run name" in e.value for e in at.error) and not at.code


def _problem(run: str) -> AppTest:
    """The influence page of ``?run=<run>`` (a run that cannot be opened)."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"page": "influence", "run": run})
    at.run()
    assert not at.exception, run
    return at
