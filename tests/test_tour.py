"""The presenter tour: chosen by precompute from arrays already computed (``precompute.tour``), checked
on read (``cache_format.tour``), listed by the Tour page with links into the influence view."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import open_app as _app

from cache_format import names as fmt
from cache_format.predicted import load_predicted
from cache_format.runs import RunCache
from cache_format.tour import TourProblem, read_tour
from explorer.text import md_escape
from precompute.tour import TOP, TourInputs, choose_tour


def _inputs(**over) -> TourInputs:
    """A hand-made run: 6 test points (test 2 the most confident mistake, 4 another), 8 training samples."""
    top_opp = np.array([[5, 1, 2], [5, 2, 1], [5, 0, 1], [3, 5, 0], [7, 1, 5], [2, 3, 0]])
    base = dict(
        y_test=np.array([0, 1, 1, 2, 0, 2]), pred=np.array([0, 1, 2, 2, 1, 2]),
        confidence=np.array([0.9, 0.8, 0.99, 0.7, 0.95, 0.6]), y_train=np.array([0, 1, 2, 0, 1, 2, 0, 1]),
        original=np.array([0, 1, 2, 0, 1, 1, 0, 0]), flipped=np.array([0, 0, 0, 0, 0, 1, 0, 1], bool),
        class_names=["zero", "one", "two"], methods=["a", "b"],
        top_pro={"a": np.array([[0, 3, 6]] * 6), "b": np.array([[0, 3, 6]] * 5 + [[1, 4, 7]])},
        top_opp={"a": top_opp, "b": top_opp},
        net={"a": np.array([0.1, -0.2, 0.0, -0.5, 0.3, -0.1, 0.2, 0.0]), "b": np.zeros(8)},
        self_inf={"a": np.arange(8.0), "b": np.arange(8.0)},
        pred_pro={"a": (np.array([2, 4]), np.array([[7, 0], [0, 7]])), "b": None})
    return TourInputs(**{**base, **over})


def test_the_choice_on_a_hand_made_run():
    entries = choose_tour(_inputs())
    by_kind = {e["kind"]: e for e in entries}
    mistake = by_kind["confident_mistake"]  # test 2 (99%): its top proponent toward "two" is train 7, flipped
    assert (mistake["index"], mistake["view"]) == (2, "predicted")
    assert "train #7" in mistake["reason"] and "originally zero (a flipped label)" in mistake["reason"]
    assert "99% sure this one is a two" in mistake["reason"]
    assert entries.count(mistake) == 1 and [e["index"] for e in entries if e["kind"] == "confident_mistake"] == [2]
    hurt = by_kind["harmful_train"]  # train 5 is an opponent of 5 test points
    assert (hurt["split"], hurt["index"]) == ("train", 5) and "of 5 test points" in hurt["reason"]
    assert "flipped" in hurt["reason"]
    assert by_kind["harmful_mislabel"]["index"] == 7  # the other flipped label (train 5 is already shown)
    assert by_kind["most_negative"]["index"] == 3  # net -0.5
    dis = by_kind["disagreement"]
    assert (dis["index"], dis["page"], dis["method"], dis["b"]) == (5, "compare", "a", "b")
    assert "share 0 of their 3" in dis["reason"]
    assert len({(e["split"], e["index"]) for e in entries}) == len(entries)  # no sample twice
    # without the predicted-label arrays the push toward the mistake is the true label's top opponent
    e = choose_tour(_inputs(pred_pro={"a": None, "b": None}))[0]
    assert (e["index"], e["view"]) == (2, "true") and "train #5" in e["reason"]
    # without ground truth or a suspect: the most confident mistake, plainly
    e = choose_tour(_inputs(flipped=None, self_inf={"a": -np.arange(8.0), "b": np.zeros(8)},
                            pred_pro={"a": None, "b": None}))[0]
    assert e["title"] == "Test #2: the most confident mistake"


def test_a_session_run_has_a_checked_tour_that_matches_its_arrays(digits_run: Path):
    run = RunCache(digits_run)
    assert run.manifest["arrays"][fmt.TOUR]["entries"] == len(read_tour(run))
    entries = {e.kind: e for e in read_tour(run)}
    assert {"confident_mistake", "harmful_train", "disagreement"} <= set(entries)
    test = run.test_samples().sort_index()
    m = run.methods[0]
    mistake = entries["confident_mistake"]
    assert not bool(test.loc[mistake.index, "correct"]) and mistake.method == m
    wrong = test[~test["correct"]]
    assert test.loc[mistake.index, "confidence"] >= wrong["confidence"].nlargest(20).min()
    if mistake.view == "predicted":  # its reason names the top proponent toward the predicted label
        got = load_predicted(run, m)
        assert f"train #{int(got.pro[got.position(mistake.index), 0])}," in mistake.reason
    hurt = entries["harmful_train"]
    opp = np.asarray(run.method_array(m, fmt.TOP_OPPONENTS))[:, :TOP]
    counts = np.bincount(opp.ravel(), minlength=run.n_train)
    assert counts[hurt.index] == counts.max() and f"of {counts.max()} test points" in hurt.reason
    dis = entries["disagreement"]
    a, b = (np.asarray(run.method_array(x, fmt.TOP_PROPONENTS))[dis.index, :TOP] for x in (dis.method, dis.b))
    assert f"share {len(set(a) & set(b))} of their" in dis.reason


def test_a_noisy_run_shows_a_flipped_label(noisy_run: Path):
    run = RunCache(noisy_run)
    train = run.train_samples().sort_index()
    entries = read_tour(run)
    flipped_shown = [e for e in entries if e.split == "train" and "flipped" in e.reason]
    assert flipped_shown and all(bool(train.loc[e.index, "flipped"]) for e in flipped_shown)
    assert any(e.kind == "top_suspect" for e in entries)


# --- the page -----------------------------------------------------------------------------------


def test_the_page_lists_the_examples_and_opens_them_in_presenter_mode(digits_run: Path, monkeypatch):
    entries = read_tour(RunCache(digits_run))
    at = _app(digits_run.parent, monkeypatch, page="tour", run="digits", present=1)
    assert at.title[0].value == "Tour: striking examples"
    assert [b.key for b in at.button if b.key.startswith("tour_")] == [f"tour_{i}" for i in range(len(entries))]
    text = " ".join(m.value for m in at.markdown)
    assert all(md_escape(e.title) in text and md_escape(e.reason) in text for e in entries)
    first = next(i for i, e in enumerate(entries) if e.page == "influence" and e.split == "test")
    at.button(key=f"tour_{first}").click().run()
    assert not at.exception
    e = entries[first]
    assert at.title[0].value.startswith(f"Test #{e.index}:")
    assert at.query_params["present"] == "1" and at.query_params["test"] == str(e.index)
    assert at.query_params["method"] == e.method
    if e.view == "predicted":  # the view explains the predicted label, as the tour said
        assert at.segmented_control(key="w_toward").value == "predicted"
    at = _app(digits_run.parent, monkeypatch, page="tour", run="digits")
    compare = next(i for i, e in enumerate(entries) if e.page == "compare")
    at.button(key=f"tour_{compare}").click().run()
    assert not at.exception and at.title[0].value == f"Compare methods on test #{entries[compare].index}"
    assert (at.query_params["a"], at.query_params["b"]) == (entries[compare].method, entries[compare].b)


def _copy(run: Path, dst: Path) -> Path:
    out = dst / run.name
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("evaluation"))
    return out


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "is not readable JSON"),
    ('{"format": 1, "entries": [{"kind": "x", "split": "test", "index": 99999, "method": "exact", '
     '"title": "t", "reason": "r"}]}', "entry 0 field 'index' is '99999', not a test id in 0..359"),
    ('{"format": 1, "entries": [{"kind": "x", "split": "test", "index": 1, "method": "../x", '
     '"title": "t", "reason": "r"}]}', "entry 0 field 'method'"),
    ('{"format": 1, "entries": [{"kind": "x", "split": "test", "index": true, "method": "exact", '
     '"title": "t", "reason": "r"}]}', "entry 0 field 'index'"),
    ('{"format": 1, "entries": [{"kind": "x", "split": "test", "index": 1, "method": "exact", "page": "compare", '
     '"b": "exact", "title": "t", "reason": "r"}]}', "entry 0 field 'b'"),
    ('[1, 2]', "is not a tour of format 1"),
])
def test_a_damaged_tour_gives_a_clear_message_not_a_crash(digits_run: Path, tmp_path, monkeypatch, content, message):
    path = _copy(digits_run, tmp_path)
    (path / fmt.TOUR).write_text(content)
    with pytest.raises(TourProblem, match="digits/arrays/tour.json"):
        read_tour(RunCache(path))
    at = _app(tmp_path, monkeypatch, page="tour", run="digits")
    errors = " ".join(e.value for e in at.error)
    assert "tour.json" in errors and message in errors and "--overwrite" in errors
    assert not [b for b in at.button if b.key.startswith("tour_")]


def test_a_run_without_a_tour_says_so(digits_run: Path, tmp_path, monkeypatch):
    path = _copy(digits_run, tmp_path)
    manifest = json.loads((path / fmt.MANIFEST).read_text())
    del manifest["arrays"][fmt.TOUR]
    (path / fmt.MANIFEST).write_text(json.dumps(manifest))
    (path / fmt.TOUR).unlink()
    at = _app(tmp_path, monkeypatch, page="tour", run="digits")
    assert any("No tour was precomputed for this run" in i.value for i in at.info)
