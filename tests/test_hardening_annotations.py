"""The decisions database and its import, as a hostile or careless user would drive them (real SQLite).

- the database is only ever created inside the cache folder (``db_path`` takes run names only, and
  ``?run=`` with ``..`` or an absolute path opens nothing);
- an upload's file name never becomes a path (the review page parses the bytes in memory);
- every bad row is refused with one line naming the row and the field (negative or fractional
  indices, labels or indices outside the run), an Excel CSV with a byte-order mark is accepted;
- a long import never holds the write lock long enough to make another reviewer's decision fail.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from helpers import copy_run
from streamlit.testing.v1 import AppTest

from explorer import page_spec, state
from explorer.annotations import AnnotationError, AnnotationStore, db_path
from explorer.text import md_escape

APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")
HEADER = "sample_index,decision,new_label,reviewer,created_at\n"


def _store(tmp_path: Path) -> AnnotationStore:
    return AnnotationStore(db_path(tmp_path, "r"), run="r")


def _dbs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.annotations.sqlite"))


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a/b", ".hidden", "", "..", "x\x00y"])
def test_db_path_takes_run_names_only(tmp_path: Path, name: str):
    with pytest.raises(AnnotationError, match="not a run name"):
        db_path(tmp_path / "cache", name)
    assert not _dbs(tmp_path)


def test_no_page_creates_a_database_outside_the_cache(digits_run: Path, tmp_path: Path, monkeypatch):
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    cache.mkdir()
    copy_run(digits_run, cache)
    victim = copy_run(digits_run, outside)  # a real run outside the cache: opening it would "work"
    monkeypatch.setenv(state.CACHE_ENV, str(cache))
    names = ["../outside/digits", str(victim), f"{cache}/../outside/digits", "..", "./../outside/digits"]
    for page in [p.spec.key for p in page_spec.discover()]:
        for name in names:
            at = AppTest.from_file(APP, default_timeout=60)
            at.query_params.update({"page": page, "run": name})
            at.session_state["reviewer"] = "mallory"
            at.run()
            assert not at.exception
            if page != "runs":
                assert at.title[0].value == "That is not a run name", (page, name)
    assert not _dbs(tmp_path)


def _review(cache: Path, run: str, monkeypatch) -> AppTest:
    monkeypatch.setenv(state.CACHE_ENV, str(cache))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"page": "review", "run": run})
    at.session_state["reviewer"] = "ann"
    at.run()
    assert not at.exception
    return at


def _upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader(key="review_upload").set_value((name, data, "text/csv")).run()
    at.button(key="review_import").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_an_uploads_file_name_never_becomes_a_path(digits_run: Path, tmp_path: Path, monkeypatch):
    cache = tmp_path / "cache"
    run = copy_run(digits_run, cache)
    victim = tmp_path / "victim.csv"
    victim.write_text("precious\n")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    rows = HEADER + "3,relabel,4,bob,2024-01-01T00:00:00\n4,keep,1,bob,2024-01-01T00:00:01\n"
    hostile = "/".join([".."] * 12) + str(victim)
    at = _upload(_review(cache, run.name, monkeypatch), hostile, rows.encode())
    assert victim.read_text() == "precious\n"
    assert any("imported 2 new rows" in s.value for s in at.success)
    with AnnotationStore(db_path(cache, run.name)) as s:
        assert s.history()["sample_index"].tolist() == [3, 4]
    new = {p for p in tmp_path.rglob("*") if p.is_file()} - set(before)
    assert {p.name for p in new} <= {f"{run.name}.annotations.sqlite{x}" for x in ("", "-wal", "-shm")}, new


@pytest.mark.parametrize(("rows", "field", "why"), [
    ("-3,keep,1,ann,t0\n", "sample_index", "-3 is not a training sample of this run (0..1436)"),
    ("1.7,keep,1,ann,t0\n", "sample_index", "'1.7' is not an integer"),
    ("1,relabel,1.5,ann,t0\n", "new_label", "'1.5' is not an integer"),
    ("1,relabel,99,ann,t0\n", "new_label", "99 is not a class of this run (0..9)"),
    ("5000,keep,1,ann,t0\n", "sample_index", "5000 is not a training sample of this run (0..1436)"),
    ("x,keep,1,ann,t0\n", "sample_index", "'x' is not an integer"),
    ("1,keep,1,   ,t0\n", "reviewer", "empty; every decision needs its reviewer's name"),
])
def test_bad_rows_are_refused_with_one_line_naming_row_and_field(tmp_path: Path, rows: str, field: str, why: str):
    s = _store(tmp_path)
    data = (HEADER + "0,keep,0,ann,t\n" + rows).encode()
    with pytest.raises(AnnotationError) as exc:
        s.import_bytes(data, "decisions.csv", n_train=1437, n_classes=10)
    msg = str(exc.value)
    assert msg == f"decisions.csv: row 3, field {field!r}: {why}", msg
    assert "\n" not in msg and s.count() == 0  # nothing imported, not even the good first row


def test_json_rows_are_checked_the_same_way(tmp_path: Path):
    import json

    s = _store(tmp_path)
    doc = {"format": "influence-explorer-decisions", "decisions": [
        {"id": 1, "sample_index": 2, "decision": "relabel", "new_label": True, "reviewer": "a", "created_at": "t"}]}
    with pytest.raises(AnnotationError, match=r"decisions.json: decision 1, field 'new_label': True is not an integer"):
        s.import_bytes(json.dumps(doc).encode(), "decisions.json", n_classes=10)
    doc["decisions"][0]["new_label"] = 3.0  # an integer written as a float is fine
    assert s.import_bytes(json.dumps(doc).encode(), "decisions.json", n_classes=10) == 1
    with pytest.raises(AnnotationError, match="unknown file type '.txt'"):
        s.import_bytes(b"{}", "decisions.txt")
    with pytest.raises(AnnotationError, match="not UTF-8"):
        s.import_bytes("sample_index,décision\n".encode("latin-1"), "x.csv")


def test_an_excel_csv_with_a_byte_order_mark_is_accepted(tmp_path: Path):
    s = _store(tmp_path)
    text = HEADER + "7,relabel,2,ann,2024-05-01T10:00:00\n8,unsure,,ann,2024-05-01T10:00:01\n"
    data = b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode()
    assert s.import_bytes(data, "Decisions.CSV", n_train=10, n_classes=3) == 2
    assert s.current().loc[7, "new_label"] == 2 and s.current().loc[8, "decision"] == "unsure"
    path = tmp_path / "excel.csv"
    path.write_bytes(data)
    assert s.import_file(path, n_train=10, n_classes=3) == 0  # same rows: nothing new


def test_record_refuses_a_negative_index_with_a_message(tmp_path: Path):
    s = _store(tmp_path)
    with pytest.raises(AnnotationError, match="sample_index: -1 is not a training sample index"):
        s.record(-1, "keep", 1, "ann")
    assert s.count() == 0


def test_the_page_shows_a_bad_import_as_one_escaped_line(digits_run: Path, tmp_path: Path, monkeypatch):
    run = copy_run(digits_run, tmp_path / "cache")
    at = _upload(_review(tmp_path / "cache", run.name, monkeypatch), "![x](http://host.invalid/x.png).csv",
                 (HEADER + "-4,keep,1,ann,t0\n").encode())
    errors = [e.value for e in at.error]
    assert errors == [md_escape("![x](http://host.invalid/x.png).csv: row 2, field 'sample_index': -4 is not a "
                                "training sample of this run (0..1436)")]
    assert "![" not in errors[0]
    with AnnotationStore(db_path(tmp_path / "cache", run.name)) as s:
        assert s.count() == 0


def test_a_long_import_never_blocks_another_reviewer(tmp_path: Path):
    """20 000 rows on 10 samples held the write lock for about 6 s in one transaction (so a decision
    with a 30 s timeout failed on a bigger file); now each batch holds it for milliseconds."""
    db = db_path(tmp_path, "r")
    AnnotationStore(db, run="r").close()
    rows = "".join(f"{i % 10},relabel,{i % 10},importer,2024-01-01T00:00:00.{i:09d}\n" for i in range(20_000))
    data = (HEADER + rows).encode()
    done: list[int] = []
    importer = threading.Thread(target=lambda: done.append(AnnotationStore(db, run="r").import_bytes(data, "big.csv")))
    other = AnnotationStore(db, run="r", timeout=2.0)
    importer.start()
    waits = []
    while importer.is_alive() or len(waits) < 3:
        t0 = time.perf_counter()
        other.record(100 + len(waits), "keep", 1, "second reviewer")  # raises "database is locked" after 2 s
        waits.append(time.perf_counter() - t0)
        time.sleep(0.01)
    importer.join(timeout=120)
    assert done == [20_000]
    assert max(waits) < 1.0, max(waits)
    assert other.count() == 20_000 + len(waits)


def test_a_csv_export_never_hands_a_spreadsheet_a_formula(tmp_path: Path):
    """Comments and reviewer names starting with = + - @ are quoted in the CSV (CSV injection), and the
    quote is removed again when the export is imported."""
    import csv
    import io

    hostile = '=HYPERLINK("http://host.invalid/x","click")'
    with _store(tmp_path) as s:
        s.record(3, "keep", 1, "-ann", given_label=1, comment=hostile)
        s.record(4, "relabel", 2, "@bob", given_label=1, comment="+1 looks like a 2")
        text = s.export_csv()
    rows = list(csv.DictReader(io.StringIO(text)))
    cells = [r[k] for r in rows for k in ("reviewer", "comment")]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")], cells
    assert rows[0]["comment"] == "'" + hostile and rows[0]["reviewer"] == "'-ann"
    with AnnotationStore(db_path(tmp_path, "copy"), run="r") as other:
        assert other.import_bytes(text.encode(), "r.decisions.csv", n_train=10, n_classes=3) == 2
        got = other.history()
    assert sorted(got["comment"]) == sorted([hostile, "+1 looks like a 2"])
    assert sorted(got["reviewer"]) == ["-ann", "@bob"]
