"""The embedding map's thumbnail strip: pure builders (no Streamlit) and the page (AppTest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from cache_format.names import EMBEDDING
from cache_format.runs import RunCache
from components.figures import PREVIEW_NAME, nearest_ids, preview_ids, preview_trace

APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")


def test_nearest_ids_match_a_brute_force_search():
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(200, 2)).astype(np.float32)
    for g in (0, 17, 199):
        d = ((xy.astype(np.float64) - xy[g]) ** 2).sum(1)
        d[g] = np.inf
        want = np.argsort(d, kind="stable")[:7]
        got = nearest_ids(xy, g, 7)
        assert got.tolist() == want.tolist() and g not in got
    assert len(nearest_ids(xy[:3], 1, 10)) == 2 and len(nearest_ids(xy[:1], 0, 5)) == 0


def test_preview_ids_put_the_most_influential_first():
    scores = np.array([0.1, -5.0, 2.0, 0.0, 3.0])
    assert preview_ids([4, 0, 1, 2, 7, 1], 5, scores, limit=4) == [1, 4, 2, 0]  # test point 7 after, repeats once
    assert preview_ids([4, 0, 7, 2], 5, None, limit=3) == [0, 2, 4]
    assert preview_ids([3], 5, scores, limit=0) == []


def test_preview_trace_numbers_the_points_like_the_strip():
    xy = np.arange(20, dtype=np.float32).reshape(10, 2)
    tr = preview_trace(xy, [3, 8, 1], n_train=6)
    assert tr.name == PREVIEW_NAME and list(tr.text) == ["1", "2", "3"]
    assert np.asarray(tr.x).tolist() == [6.0, 16.0, 2.0]
    assert np.asarray(tr.customdata).tolist() == [[3, 3], [8, 2], [1, 1]]  # (global id, index in its split)


def test_the_page_shows_the_selected_point_and_its_neighbours_and_a_thumbnail_opens(digits_run: Path, monkeypatch):
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(digits_run.parent))
    run = RunCache(digits_run)
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"page": "embedding", "run": digits_run.name, "train": "5"})
    at.run()
    assert not at.exception, at.exception
    xy = np.asarray(run.array(EMBEDDING), dtype=np.float32)
    near = nearest_ids(xy, 5, 7).tolist()
    strip = [b for b in at.button if b.key and b.key.startswith("embstrip_")]
    assert [b.key for b in strip] == [f"embstrip_{n}_{g}" for n, g in enumerate([5, *near])]
    assert strip[0].label == "1 · train #5"
    assert any(m.value == "**train #5 and its neighbours (numbered on the map)**" for m in at.markdown)
    g = near[0]
    strip[1].click().run()
    assert not at.exception, at.exception
    want = ("test", g - run.n_train) if g >= run.n_train else ("train", g)
    assert at.query_params[want[0]] == str(want[1])
