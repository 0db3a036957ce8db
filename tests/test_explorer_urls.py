"""Navigable state under AppTest, on the session's digits run: every invalid URL value gets a visible
warning naming the parameter (and stays in the URL: no silent change), the URL holds only the
current page's parameters, a URL that drops a parameter drops the selection (what Back does), the
gallery's filters, sort and page live in the URL; Compare's sign-aware overlap; presenter mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cache_format.runs import RunCache
from components.compare_figures import sign_overlap

APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")


@pytest.fixture
def app(digits_run: Path, monkeypatch):
    """``app(page, **params)``: a fresh session on ``/?page=<page>&...`` over the digits run."""
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(digits_run.parent))

    def make(page: str | None = None, **params: object) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        at.query_params.update({**({"page": page} if page else {}), **{k: str(v) for k, v in params.items()}})
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at
    return make


def _ids(at: AppTest, prefix: str) -> list[int]:
    """Ids of the cards: buttons keyed '<prefix>_<rank>_<id>', the gallery's ("pred") page links 'test #<id>'."""
    if prefix == "pred":
        return [int(link.value.split("#")[1]) for link in at.get("page_link") if link.value.startswith("test #")]
    return [int(b.key.rsplit("_", 1)[1]) for b in at.button if b.key and b.key.startswith(prefix + "_")]


def _warnings(at: AppTest) -> str:
    return "\n".join(w.value for w in at.warning)


@pytest.mark.parametrize(("page", "key", "value"), [
    ("influence", "test", "999999"), ("influence", "test", "-1"), ("influence", "test", "abc"),
    ("influence", "train", "999999"), ("influence", "k", "0"), ("influence", "method", "bogus"),
    ("compare", "a", "bogus"), ("compare", "b", "bogus"), ("embedding", "color", "bogus"),
    ("predictions", "outcome", "bogus"), ("predictions", "sort", "bogus"), ("predictions", "p", "abc"),
    ("predictions", "classes", "3,x"), ("predictions", "conf", "0.9-0.1"), ("influence", "present", "yes"),
])
def test_invalid_url_value_is_named_in_a_persistent_warning(app, page, key, value):
    at = app(page, run="digits", **{key: value})
    assert f"{key}={value}" in _warnings(at), _warnings(at)
    assert at.query_params[key] == value  # left as given: no silent change of the URL
    assert not at.toast  # not a fading toast
    at.run()  # still there on the next rerun (e.g. after any widget change)
    assert f"{key}={value}" in _warnings(at)


def test_out_of_range_test_point_shows_the_default_not_a_silent_jump(app, digits_run):
    test = RunCache(digits_run).test_samples()
    first_wrong = int(test.index[~test["correct"]][0])
    at = app("influence", run="digits", test=999999)
    assert at.title[0].value.startswith(f"Test #{first_wrong}:")
    assert f"from 0 to {len(test) - 1}" in _warnings(at)


def test_url_holds_only_the_current_pages_parameters(app):
    at = app("compare", run="digits", test=3, train=7, color="influence", outcome="incorrect")
    assert {k for k in at.query_params} == {"run", "test"}
    assert "URL parameter" not in _warnings(at)


def test_a_url_without_the_training_sample_returns_to_the_test_point(app, digits_run):
    """What Back does after test -> training sample: the URL loses ``train``, the session follows it."""
    at = app("influence", run="digits", test=42, method="exact")
    first = _ids(at, "pro")[0]
    at.button(key=f"pro_0_{first}").click().run()
    assert at.query_params["train"] == str(first)
    assert at.title[0].value.startswith(f"Training sample #{first}")
    del at.query_params["train"]  # the previous history entry
    at.run()
    assert at.title[0].value.startswith("Test #42:") and "train" not in at.query_params


def test_gallery_filters_sort_and_page_live_in_the_url(app, digits_run):
    test = RunCache(digits_run).test_samples()
    at = app("predictions", run="digits", outcome="incorrect", sort="loss", classes="3,5,8")
    assert at.segmented_control(key="pf_outcome").value == "Incorrect"
    assert at.selectbox(key="pf_sort").value == "Highest loss first"
    names = RunCache(digits_run).class_names
    assert at.multiselect(key="pf_classes").value == [names[3], names[5], names[8]]
    want = test[(~test["correct"]) & test["label"].isin([3, 5, 8])]
    want = want.iloc[np.lexsort((want["index"].to_numpy(), -want["loss"].to_numpy()))]
    assert _ids(at, "pred") == want["index"][:18].tolist()
    # a widget change goes to the URL (and back to page 1)
    at.selectbox(key="pf_sort").set_value("Test index").run()
    assert at.query_params["sort"] == "index" and at.query_params["outcome"] == "incorrect"
    assert _ids(at, "pred") == sorted(want["index"].tolist())[:18]
    # the page number too: page 2 of all test points in index order
    at = app("predictions", run="digits", sort="index", p=2)
    order = sorted(test["index"].tolist())
    assert _ids(at, "pred") == order[18:36]
    at.button(key="pf_next").click().run()
    assert at.query_params["p"] == "3" and _ids(at, "pred") == order[36:54]


def test_compare_splits_same_sign_from_opposite_sign_overlap(app, digits_run):
    run = RunCache(digits_run)
    for test in range(40):  # a test point where tracin flips the sign of one of exact's top-k, if any
        args = [run.method_array(m, f"top_{w}")[test, :10] for m in ("exact", "tracin")
                for w in ("proponents", "opponents")]
        ov = sign_overlap(args[0], args[1], args[2], args[3])
        if ov.opposite:
            break
    at = app("compare", run="digits", test=test, a="exact", b="tracin")
    vals = {m.label: m.value for m in at.metric}
    assert vals["Proponents shared"] == f"{len(ov.same_pro)} / 10"
    assert vals["Opponents shared"] == f"{len(ov.same_opp)} / 10"
    assert vals["Opposite sign"] == str(len(ov.opposite))
    pro_a = at.dataframe[0].value
    assert (pro_a["in tracin"] == "✓ same sign").sum() == len(ov.same_pro)
    assert (pro_a["in tracin"] == "✗ opposite sign").sum() == len(ov.pro_a_opp_b)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    flips = [t for t in spec["data"] if t.get("name", "").startswith("opposite sign")]
    assert len(flips) == 1


def test_compare_refuses_a_method_against_itself(app):
    at = app("compare", run="digits", test=3, a="exact", b="exact")
    assert any("always agrees with itself" in e.value for e in at.error)
    assert not at.dataframe and not at.metric


def test_embedding_influence_colours_use_the_rank_scale(app, digits_run):
    at = app("embedding", run="digits", test=5, method="exact", color="influence")
    train = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    m = train["marker"]
    assert m["cmin"] == -1 and m["cmax"] == 1 and m["cmid"] == 0
    assert "rank scale" in m["colorbar"]["title"]["text"]


def test_presenter_mode_shows_four_and_four_cards_and_hides_the_chrome(app, digits_run):
    run = RunCache(digits_run)
    at = app("influence", run="digits", test=42, method="exact", present=1)
    assert _ids(at, "pro") == run.method_array("exact", "top_proponents")[42, :4].tolist()
    assert _ids(at, "opp") == run.method_array("exact", "top_opponents")[42, :4].tolist()
    assert any("stHeader" in h.proto.body and "font-size:20px" in h.proto.body for h in at.get("html"))
    assert at.query_params["present"] == "1"


def test_influence_steps_to_the_next_misclassified_point(app, digits_run):
    correct = RunCache(digits_run).test_samples()["correct"].to_numpy()
    wrong = np.flatnonzero(~correct)
    at = app("influence", run="digits", test=int(wrong[0]))
    assert at.button(key="step_next_wrong").proto.shortcut.lower() == "m"
    assert at.button(key="step_next").proto.shortcut.lower() in ("right", "arrowright")
    at.button(key="step_next_wrong").click().run()
    assert at.query_params["test"] == str(int(wrong[1]))
    at.button(key="step_prev").click().run()
    assert at.query_params["test"] == str(int(wrong[1]) - 1)
