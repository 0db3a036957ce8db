"""AppTest of the review page: shortcut buttons decide, advance the queue and write the database."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import review_page
from streamlit.testing.v1 import AppTest

from cache_format.mislabels import load_mislabels
from cache_format.runs import RunCache
from explorer.annotations import AnnotationStore

APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")


@pytest.fixture
def page(noisy_run: Path, monkeypatch):
    with review_page(noisy_run, monkeypatch) as pair:
        yield pair


def _shown(at: AppTest) -> int:
    """Training index of the card on screen (from its subheader '#<i> · rank ...')."""
    head = at.subheader[0].value
    return int(head.split("#")[1].split(" ")[0])


def test_reviewer_name_is_asked_once(page):
    at, _ = page
    at.run()
    assert not at.exception
    assert at.text_input(key="review_name_input") is not None
    at.text_input(key="review_name_input").input("Ann")
    at.button[0].click().run()
    assert at.session_state["reviewer"] == "Ann"
    assert not at.exception and at.subheader  # the queue is shown now


def test_shortcut_buttons_decide_advance_and_persist(page, noisy_run: Path):
    at, db = page
    at.session_state["reviewer"] = "tester"
    at.run()
    assert not at.exception, at.exception
    data = load_mislabels(RunCache(noisy_run))
    order = data.ranking(data.default_method)["index"].tolist()
    assert _shown(at) == order[0]
    buttons = {b.key: b for b in at.button}
    assert buttons["review_keep"].proto.shortcut.lower() == "k"
    assert buttons["review_relabel_3"].proto.shortcut == "3"

    at.button(key="review_keep").click().run()
    assert _shown(at) == order[1]  # auto-advanced
    at.button(key="review_relabel_3").click().run()
    assert _shown(at) == order[2]
    at.button(key="review_accept").click().run()
    assert _shown(at) == order[3]
    at.button(key="review_unsure").click().run()
    assert _shown(at) == order[4]

    with AnnotationStore(db) as store:
        hist = store.history()
    assert hist["sample_index"].tolist() == order[:4]
    assert hist["decision"].tolist() == ["keep", "relabel", "accept", "unsure"]
    assert hist["reviewer"].unique().tolist() == ["tester"]
    assert hist.loc[1, "new_label"] == 3
    given = data.table["label"].to_numpy()
    assert hist.loc[0, "new_label"] == given[order[0]]
    assert hist.loc[2, "new_label"] == data.table["suggested_label"].to_numpy()[order[2]]
    assert (hist["method"] == data.default_method).all() and hist.loc[0, "rank"] == 1

    at.button(key="review_undo").click().run()  # undo goes back to the undone sample
    assert _shown(at) == order[3]
    with AnnotationStore(db) as store:
        assert order[3] not in store.current().index and len(store.history()) == 5

    at.radio(key="review_status").set_value("reviewed").run()
    assert _shown(at) == order[0]
    assert not at.exception


def test_page_without_run_opens_the_first_and_the_sidebar_picks_another(noisy_run: Path, digits_run: Path,
                                                                         monkeypatch):
    """No ``?run=``: the first readable run opens (like every page); the one run picker (the sidebar's)
    switches to another, and the review queue follows it."""
    from explorer.ui import runs

    assert noisy_run.parent == digits_run.parent
    runs.clear()  # the run list is cached for 10 s, perhaps from before the noisy run was built
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(noisy_run.parent))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["page"] = "review"
    at.run()
    assert not at.exception
    assert at.query_params["run"] == digits_run.name and at.header[0].value == "Review suspected mislabels"
    picker = at.sidebar.selectbox(key="w_run")
    assert any(o.startswith(f"{noisy_run.name} · ") for o in picker.options)  # options show "<run> · data/model"
    picker.set_value(noisy_run.name).run()
    assert not at.exception and at.query_params["run"] == noisy_run.name
    assert at.header[0].value == "Review suspected mislabels" and at.text_input(key="review_name_input")


def test_reviewer_name_is_remembered_in_the_url(page):
    """Entered once, the name goes to the URL (``?reviewer=``): a reload or a bookmark opens the queue."""
    at, _ = page
    at.run()
    at.text_input(key="review_name_input").input("Ann")
    at.button[0].click().run()
    assert at.query_params["reviewer"] == "Ann"
    at2 = AppTest.from_file(APP, default_timeout=60)  # a new session (a reload) on that URL
    at2.query_params.update({"page": "review", "run": at.query_params["run"], "reviewer": "Ann"})
    at2.run()
    assert not at2.exception and at2.session_state["reviewer"] == "Ann"
    assert at2.subheader and not [t for t in at2.text_input if t.key == "review_name_input"]


def test_an_unusable_reviewer_in_the_url_is_named_and_the_name_asked(page):
    at, _ = page
    at.query_params["reviewer"] = "x" * 200
    at.run()
    assert any("`reviewer`" in w.value for w in at.warning)
    assert at.text_input(key="review_name_input") is not None


def test_status_counts_follow_the_filters_and_captions_are_labelled(page, noisy_run: Path):
    at, _ = page
    at.session_state["reviewer"] = "tester"
    at.run()
    run = RunCache(noisy_run)
    data = load_mislabels(run)
    given = data.table["label"].to_numpy()
    n = run.n_train
    assert at.radio(key="review_status").options[-1] == f"all ({n})"
    cls = run.class_names[3]
    at.sidebar.multiselect(key="review_classes").set_value([cls]).run()
    n3 = int((given == 3).sum())
    assert at.radio(key="review_status").options == [f"pending ({n3})", "reviewed (0)", "unsure (0)", f"all ({n3})"]
    captions = [c for img in at.get("image") for c in img.captions]
    assert any(c.startswith("test #") and " · true " in c and " · pred " in c and " · score " in c for c in captions)
    assert any(c.startswith("train #") and " · label " in c for c in captions)


def test_a_map_selection_limits_the_queue(page, noisy_run: Path):
    at, _ = page
    data = load_mislabels(RunCache(noisy_run))
    order = data.ranking(data.default_method)["index"].tolist()
    picked = [order[40], order[7], order[90]]
    at.session_state["reviewer"] = "tester"
    at.session_state["review_selection"] = {"run": noisy_run.name, "ids": picked}
    at.run()
    assert _shown(at) == order[7] and "1 of 3 in queue" in at.subheader[0].value
    assert any("3** training samples sent from the embedding map" in i.value for i in at.info)
    at.button(key="review_clear_map").click().run()
    assert _shown(at) == order[0]


def test_the_page_says_which_ranking_is_the_default_and_why(page, noisy_run: Path):
    at, _ = page
    at.session_state["reviewer"] = "tester"
    at.run()
    assert not at.exception, at.exception
    data = load_mislabels(RunCache(noisy_run))
    assert at.selectbox(key="review_method").value == data.ranking_default
    captions = [c.value for c in at.sidebar.caption]
    assert any(c.startswith("Default ranking:") and data.ranking_reason[:40] in c for c in captions), captions
