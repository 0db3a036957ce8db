"""Exclude, comments and bulk actions: the decisions database (schema 2, migrated from schema 1) and
the review page (AppTest)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from helpers import review_page
from streamlit.testing.v1 import AppTest

from cache_format.mislabels import load_mislabels
from cache_format.runs import RunCache
from explorer.annotations import AnnotationError, AnnotationStore
from explorer.decisions_io import parse_export

APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")

#: the CREATE statements of schema version 1, verbatim (as shipped before exclude / comments)
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    run          TEXT,
    sample_index INTEGER NOT NULL CHECK (sample_index >= 0),
    decision     TEXT NOT NULL CHECK (decision IN ('keep', 'accept', 'relabel', 'unsure', 'undo')),
    given_label  INTEGER,
    new_label    INTEGER,
    reviewer     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    method       TEXT,
    score        REAL,
    rank         INTEGER,
    undoes       INTEGER REFERENCES decisions(id)
);
CREATE INDEX IF NOT EXISTS decisions_sample ON decisions(sample_index, id);
CREATE INDEX IF NOT EXISTS decisions_key ON decisions(created_at, reviewer);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


def _v1_database(path: Path) -> list[tuple]:
    """A database made by schema 1 with five decisions and an undo; returns its rows."""
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('run', 'old')")
    rows = [(1, "old", 3, "keep", 5, 5, "ann", "2026-01-01T00:00:01", "loss", 0.5, 1, None),
            (2, "old", 4, "relabel", 1, 7, "ann", "2026-01-01T00:00:02", "loss", 0.4, 2, None),
            (3, "old", 9, "unsure", 2, None, "bob", "2026-01-01T00:00:03", None, None, None, None),
            (4, "old", 4, "undo", None, None, "ann", "2026-01-01T00:00:04", None, None, None, 2),
            (5, "old", 8, "accept", 0, 6, "bob", "2026-01-01T00:00:05", "oga", 1.5, 3, None)]
    conn.executemany("INSERT INTO decisions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.commit()
    conn.close()
    return rows


def test_a_schema_1_database_opens_migrated_and_keeps_every_decision(tmp_path):
    path = tmp_path / "old.annotations.sqlite"
    old = _v1_database(path)
    with AnnotationStore(path, run="old") as s:
        hist = s.history()
        assert hist["id"].tolist() == [r[0] for r in old]
        assert hist["decision"].tolist() == [r[3] for r in old]
        assert hist["new_label"].tolist()[:2] == [5, 7] and hist["undoes"].tolist()[3] == 2
        assert hist["comment"].isna().all() and hist["batch"].isna().all()
        cur = s.current()
        assert sorted(cur.index) == [3, 8, 9]  # #4's relabel was undone
        new = s.record(4, "exclude", 1, "ann", given_label=1, comment="blurry scan")  # new decision kinds work
        assert new == 6  # ids continue after the migrated rows
        assert s.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "2"
        assert s.excluded().tolist() == [4]
    with AnnotationStore(path, run="old") as s:  # reopening a migrated database changes nothing
        assert len(s.history()) == 6 and s.current().loc[4, "comment"] == "blurry scan"
        assert s.current().loc[4, "new_label"] is pd.NA


def test_a_database_from_a_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "new.annotations.sqlite"
    with AnnotationStore(path, run="r") as s:
        s.record(1, "keep", 2, "ann")
        s.conn.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    before = path.read_bytes()
    with pytest.raises(AnnotationError, match="schema version 9, newer"):
        AnnotationStore(path, run="r")
    assert path.read_bytes() == before


def test_bulk_decisions_are_one_batch_undone_together(tmp_path):
    with AnnotationStore(tmp_path / "r.annotations.sqlite", run="r") as s:
        s.record(1, "keep", 0, "ann")
        batch = s.record_many([{"sample_index": i, "given_label": 3, "method": "loss", "rank": n + 1}
                               for n, i in enumerate((5, 6, 7))], "exclude", "ann", comment="all smudged")
        assert s.excluded().tolist() == [5, 6, 7]
        cur = s.current()
        assert set(cur.loc[[5, 6, 7], "batch"]) == {batch} and set(cur.loc[[5, 6, 7], "comment"]) == {"all smudged"}
        last = s.undo_last("ann")  # Z after a bulk action retracts the whole batch
        assert last["undone"] == 3 and s.excluded().tolist() == [] and sorted(s.current().index) == [1]
        b2 = s.record_many([{"sample_index": 5, "new_label": 8}, {"sample_index": 6, "new_label": 9}], "accept", "ann")
        s.record(2, "unsure", None, "ann")
        assert s.undo_batch(b2, "ann") == 2  # the panel's undo: that batch only, even after a later decision
        assert sorted(s.current().index) == [1, 2]
        with pytest.raises(AnnotationError, match="needs the label"):
            s.record_many([{"sample_index": 1}, {"sample_index": 2}], "accept", "ann")
        assert sorted(s.current().index) == [1, 2]  # all or nothing
        with pytest.raises(AnnotationError, match="comment"):
            s.record(3, "keep", 1, "ann", comment="x" * 1001)


def test_exports_carry_exclude_comment_and_batch_and_import_back(tmp_path):
    with AnnotationStore(tmp_path / "a.annotations.sqlite", run="r") as s:
        s.record(1, "exclude", None, "ann", given_label=2, comment='says "7", looks like 1; really')
        s.record_many([{"sample_index": 4, "new_label": 3}], "keep", "bob", comment="ok")
        csv_text, json_text = s.export_csv(), s.export_json()
    assert "comment" in csv_text.splitlines()[0] and "batch" in csv_text.splitlines()[0]
    doc = json.loads(json_text)
    assert doc["version"] == 2 and doc["decisions"][0]["decision"] == "exclude"
    assert doc["decisions"][0]["comment"] == 'says "7", looks like 1; really' and doc["decisions"][1]["batch"]
    for name, data in (("d.csv", csv_text), ("d.json", json_text)):
        rows = parse_export(data.encode(), name, n_train=10, n_classes=5)
        with AnnotationStore(tmp_path / f"{name}.annotations.sqlite", run="r") as t:
            assert t.import_rows(rows) == 2
            cur = t.current()
            assert cur.loc[1, "decision"] == "exclude" and cur.loc[1, "comment"].startswith('says "7"')
            assert t.excluded().tolist() == [1] and t.excluded_csv() == "index\n1\n"


# ------------------------------------------------------------------------------------------- page
@pytest.fixture
def page(noisy_run: Path, monkeypatch):
    with review_page(noisy_run, monkeypatch, reviewer="tester") as pair:
        yield pair


def _shown(at: AppTest) -> int:
    return int(at.subheader[0].value.split("#")[1].split(" ")[0])


def test_exclude_with_a_comment_is_saved_and_shown(page):
    at, db = page
    at.run()
    at.radio(key="review_status").set_value("all").run()  # decided samples stay in this queue
    first = _shown(at)
    at.text_input(key=f"review_comment_{first}").input("two digits in one crop")
    at.button(key="review_exclude").click().run()
    assert not at.exception, at.exception
    assert _shown(at) != first  # advanced like every decision
    with AnnotationStore(db) as s:
        cur = s.current()
    assert cur.loc[first, "decision"] == "exclude" and cur.loc[first, "comment"] == "two digits in one crop"
    assert cur.loc[first, "new_label"] is pd.NA
    at.button(key="review_prev").click().run()
    assert _shown(at) == first
    assert any("exclude" in i.value and "two digits in one crop" in i.value for i in at.info)
    assert any("1 excluded" in p.proto.text for p in at.get("progress"))


def test_bulk_action_marks_all_shown_of_a_pair_after_confirmation_and_undoes(page, noisy_run: Path):
    at, db = page
    at.run()
    assert not [b for b in at.button if b.key == "review_bulk_ask"]  # unfiltered queue: no bulk button
    data = load_mislabels(RunCache(noisy_run))
    pair_box = at.sidebar.selectbox(key="review_pair")
    pair = pair_box.options[1].rsplit(" (", 1)[0]  # the most frequent given -> suggested pair
    pair_box.set_value(pair).run()
    t = data.table
    names = RunCache(noisy_run).class_names
    members = {int(i) for i, g, s in zip(t.index, t["label"], t["suggested_label"], strict=True)
               if g != s and f"{names[g]} → {names[s]}" == pair}
    n = len(members)
    assert n > 1 and at.radio(key="review_status").options[0] == f"pending ({n})"
    at.selectbox(key="review_bulk_decision").set_value("exclude").run()
    at.text_input(key="review_bulk_comment").input("background noise").run()
    at.button(key="review_bulk_ask").click().run()
    assert any(f"**{n:,}** samples" in w.value for w in at.warning)  # asks, naming the count
    with AnnotationStore(db) as s:
        assert s.count() == 0  # nothing written before the confirmation
    at.button(key="review_bulk_confirm").click().run()
    assert not at.exception, at.exception
    with AnnotationStore(db) as s:
        cur = s.current()
    assert set(cur.index) == members and (cur["decision"] == "exclude").all()
    assert cur["batch"].nunique() == 1 and (cur["comment"] == "background noise").all()
    assert at.radio(key="review_status").options[:2] == ["pending (0)", f"reviewed ({n})"]
    at.button(key="review_bulk_undo").click().run()
    with AnnotationStore(db) as s:
        assert s.current().empty and s.count() == 2 * n
    assert at.radio(key="review_status").options[0] == f"pending ({n})"


def test_a_bulk_confirmation_is_asked_again_when_the_queue_changes(page):
    at, db = page
    at.run()
    at.sidebar.multiselect(key="review_classes").set_value([at.sidebar.multiselect(key="review_classes").options[2]]).run()
    at.button(key="review_bulk_ask").click().run()
    assert [b for b in at.button if b.key == "review_bulk_confirm"]
    at.button(key="review_keep").click().run()  # one sample of the queue decided: the pending tab shrinks
    assert not [b for b in at.button if b.key == "review_bulk_confirm"]
    assert [b for b in at.button if b.key == "review_bulk_ask"]
    at.button(key="review_bulk_ask").click().run()
    at.button(key="review_bulk_cancel").click().run()
    with AnnotationStore(db) as s:
        assert s.count() == 1

