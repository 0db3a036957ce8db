"""Reviewers' label decisions: an append-only SQLite log beside the cache (stdlib only, torch-free).

File: ``<cache-dir>/<run>.annotations.sqlite``, *beside* the run folder, so rebuilding or deleting
a run's cache never touches its decisions. WAL journal, ``synchronous=FULL``, one ``BEGIN
IMMEDIATE`` transaction per decision and a busy timeout, so several reviewers (processes) can
write at once and a killed writer loses nothing it committed.

History is append-only. A sample's *current* decision is its latest decision that has not been
undone; an undo is itself a row (``decision = 'undo'``, ``undoes = <id>``), so nothing is ever
deleted or updated.

Decisions: ``keep`` (the given label is right), ``accept`` (take the suggested label),
``relabel`` (a label the reviewer chose), ``unsure``. ``new_label`` is the label the decision
assigns (the given label for ``keep``; NULL for ``unsure``).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cache_format.atomic import atomic_write

DECISIONS = ("keep", "accept", "relabel", "unsure")
UNDO = "undo"
SCHEMA_VERSION = 1
EXPORT_FORMAT = "influence-explorer-decisions"
COLUMNS = ("id", "run", "sample_index", "decision", "given_label", "new_label", "reviewer", "created_at",
           "method", "score", "rank", "undoes")
_REQUIRED_IMPORT = ("sample_index", "decision", "reviewer", "created_at")

_SCHEMA = """
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
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

_EFFECTIVE = ("SELECT * FROM decisions WHERE decision != 'undo' "
              "AND id NOT IN (SELECT undoes FROM decisions WHERE undoes IS NOT NULL)")


class AnnotationError(ValueError):
    """A bad decision, import file or database; the message names the file/field and the fix."""


def db_path(cache_dir: str | Path, run: str) -> Path:
    """Where run ``run``'s decisions live: beside (not inside) the run folder."""
    return Path(cache_dir) / f"{run}.annotations.sqlite"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def _retry_while_locked(fn, timeout: float) -> None:
    """Run ``fn``; while SQLite says the database is locked/busy, retry until ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fn()
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class AnnotationStore:
    """One connection to a decisions database; safe to use from several processes at once."""

    def __init__(self, path: str | Path, run: str | None = None, timeout: float = 30.0):
        self.path = Path(path)
        self.run = run
        if not self.path.parent.is_dir():
            raise AnnotationError(f"{self.path.parent}: folder for the decisions database does not exist; "
                                  "point --cache-dir at an existing cache folder")
        try:
            self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            # Entering WAL needs an exclusive lock, and SQLite may answer BUSY for it without calling
            # the busy handler (two processes creating the database at once): retry until `timeout`.
            _retry_while_locked(lambda: self.conn.execute("PRAGMA journal_mode = WAL"), timeout)
            self.conn.execute("PRAGMA synchronous = FULL")

            def create() -> None:
                with self._write():
                    self._create_schema()

            _retry_while_locked(create, timeout)
        except sqlite3.DatabaseError as exc:
            raise AnnotationError(f"{self.path}: not a usable decisions database ({exc}); move it aside "
                                  "(keep it: it may hold decisions) and reopen the review page") from None

    def _create_schema(self) -> None:
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                self.conn.execute(stmt)
        self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('created_at', ?)", (now_iso(),))
        if self.run:
            self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('run', ?)", (self.run,))

    # ----------------------------------------------------------------------------- transactions
    class _Tx:
        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb):
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def _write(self) -> AnnotationStore._Tx:
        """``with store._write():`` one IMMEDIATE transaction (takes the write lock up front)."""
        return AnnotationStore._Tx(self.conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> AnnotationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- writing
    def record(self, sample_index: int, decision: str, new_label: int | None, reviewer: str,
               given_label: int | None = None, method: str | None = None, score: float | None = None,
               rank: int | None = None, created_at: str | None = None) -> int:
        """Append one decision in its own transaction; returns its row id."""
        if decision not in DECISIONS:
            raise AnnotationError(f"decision: {decision!r} is not one of {list(DECISIONS)}")
        if not reviewer or not str(reviewer).strip():
            raise AnnotationError("reviewer: a reviewer name is required; enter your name on the review page")
        if decision == "unsure":
            new_label = None
        elif new_label is None:
            raise AnnotationError(f"new_label: decision {decision!r} needs the label it assigns")
        row = (self.run, int(sample_index), decision, _int_or_none(given_label), _int_or_none(new_label),
               str(reviewer).strip(), created_at or now_iso(), method, _float_or_none(score), _int_or_none(rank))
        with self._write() as c:
            cur = c.execute("INSERT INTO decisions(run, sample_index, decision, given_label, new_label, reviewer, "
                            "created_at, method, score, rank) VALUES (?,?,?,?,?,?,?,?,?,?)", row)
            return int(cur.lastrowid)

    def undo_last(self, reviewer: str | None = None) -> dict[str, Any] | None:
        """Retract the latest still-effective decision (of ``reviewer``, if given); returns it, or None."""
        with self._write() as c:
            q = _EFFECTIVE + (" AND reviewer = ?" if reviewer else "") + " ORDER BY id DESC LIMIT 1"
            last = c.execute(q, (reviewer,) if reviewer else ()).fetchone()
            if last is None:
                return None
            c.execute("INSERT INTO decisions(run, sample_index, decision, reviewer, created_at, undoes) "
                      "VALUES (?,?,?,?,?,?)", (self.run, last["sample_index"], UNDO, reviewer or last["reviewer"],
                                               now_iso(), last["id"]))
            return dict(last)

    # ---------------------------------------------------------------------------------- reading
    def history(self) -> pd.DataFrame:
        """Every row ever written (decisions and undos), oldest first."""
        rows = self.conn.execute("SELECT * FROM decisions ORDER BY id").fetchall()
        return _typed(pd.DataFrame([dict(r) for r in rows], columns=list(COLUMNS)))

    def current(self) -> pd.DataFrame:
        """The current decision of each decided sample (latest not undone), indexed by sample_index."""
        rows = self.conn.execute(
            f"SELECT d.* FROM decisions d JOIN (SELECT sample_index, MAX(id) AS id FROM ({_EFFECTIVE}) "
            "GROUP BY sample_index) m ON d.id = m.id ORDER BY d.id").fetchall()
        df = _typed(pd.DataFrame([dict(r) for r in rows], columns=list(COLUMNS)))
        return df.set_index("sample_index", drop=False)

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])

    def status(self, n_train: int) -> np.ndarray:
        """``'pending'`` / ``'reviewed'`` / ``'unsure'`` for every training index."""
        out = np.full(n_train, "pending", dtype=object)
        cur = self.current()
        cur = cur[cur["sample_index"] < n_train]
        idx = cur["sample_index"].to_numpy(np.int64)
        out[idx] = np.where(cur["decision"].to_numpy() == "unsure", "unsure", "reviewed")
        return out

    # ------------------------------------------------------------------------------ export/import
    def export_frame(self) -> pd.DataFrame:
        """Full history plus a ``current`` column (True on each sample's current decision)."""
        hist = self.history()
        current_ids = set(self.current()["id"].tolist())
        hist["current"] = hist["id"].isin(current_ids)
        return hist

    def export_csv(self, path: str | Path | None = None) -> str:
        text = self.export_frame().to_csv(index=False)
        if path is not None:
            atomic_write(path, text)
        return text

    def export_json(self, path: str | Path | None = None) -> str:
        df = self.export_frame()
        records = [{k: _json_value(v) for k, v in r.items()} for r in df.to_dict(orient="records")]
        text = json.dumps({"format": EXPORT_FORMAT, "version": SCHEMA_VERSION, "run": self.run,
                           "exported_at": now_iso(), "decisions": records}, indent=1)
        if path is not None:
            atomic_write(path, text)
        return text

    def import_file(self, path: str | Path) -> int:
        """Append the decisions (and undos) of an exported CSV/JSON file; returns rows added.

        All-or-nothing (one transaction); rows already present (same sample, decision, labels,
        reviewer and time) are skipped, so importing the same file twice adds nothing.
        """
        rows = read_export(path)
        added = 0
        id_map: dict[int, int] = {}
        with self._write() as c:
            for r in rows:
                undoes = r.get("undoes")
                if r["decision"] == UNDO:
                    if undoes is None or int(undoes) not in id_map:
                        raise AnnotationError(f"{path}: undo row for sample {r['sample_index']} refers to decision "
                                              f"id {undoes!r} that is not earlier in the file; export it again")
                    undoes = id_map[int(undoes)]
                key = (r["sample_index"], r["decision"], r.get("new_label"), r["reviewer"], r["created_at"])
                hit = c.execute("SELECT id FROM decisions WHERE sample_index IS ? AND decision IS ? AND new_label IS ? "
                                "AND reviewer IS ? AND created_at IS ?", key).fetchone()
                if hit is None:
                    cur = c.execute(
                        "INSERT INTO decisions(run, sample_index, decision, given_label, new_label, reviewer, created_at,"
                        " method, score, rank, undoes) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (r.get("run") or self.run, r["sample_index"], r["decision"], r.get("given_label"),
                         r.get("new_label"), r["reviewer"], r["created_at"], r.get("method"), r.get("score"),
                         r.get("rank"), undoes))
                    new_id = int(cur.lastrowid)
                    added += 1
                else:
                    new_id = int(hit[0])
                if r.get("id") is not None:
                    id_map[int(r["id"])] = new_id
        return added

    # ----------------------------------------------------------------------------- cleaned labels
    def cleaned_labels(self, given_labels: Iterable[int]) -> pd.DataFrame:
        """``index,label`` for every training sample: the current decision's label, else the given one."""
        labels = np.asarray(list(given_labels), np.int64).copy()
        cur = self.current()
        cur = cur[cur["new_label"].notna() & (cur["sample_index"] < len(labels))]
        labels[cur["sample_index"].to_numpy(np.int64)] = cur["new_label"].to_numpy(np.int64)
        return pd.DataFrame({"index": np.arange(len(labels), dtype=np.int64), "label": labels})

    def write_cleaned_labels(self, path: str | Path, given_labels: Iterable[int]) -> Path:
        """Write the cleaned labels CSV that ``precompute --labels-override FILE`` reads (atomically)."""
        atomic_write(path, self.cleaned_labels(given_labels).to_csv(index=False))
        return Path(path)


# ------------------------------------------------------------------------------------------ helpers
def read_export(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an exported decisions file (``.csv`` or ``.json``), validated, in id order."""
    p = Path(path)
    if not p.is_file():
        raise AnnotationError(f"{p}: decisions file not found; pass a CSV or JSON exported from the review page")
    try:
        if p.suffix.lower() == ".json":
            doc = json.loads(p.read_text())
            if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT or not isinstance(doc.get("decisions"), list):
                raise AnnotationError(f"{p}: not a decisions export (expected format {EXPORT_FORMAT!r} with a "
                                      "'decisions' list); export it again from the review page")
            rows = doc["decisions"]
        elif p.suffix.lower() == ".csv":
            with open(p, newline="") as fh:
                reader = csv.DictReader(fh)
                missing = [c for c in _REQUIRED_IMPORT if c not in (reader.fieldnames or [])]
                if missing:
                    raise AnnotationError(f"{p}: missing columns {missing}; a decisions CSV needs "
                                          f"{list(_REQUIRED_IMPORT)} (export it from the review page)")
                rows = [dict(r) for r in reader]
        else:
            raise AnnotationError(f"{p}: unknown file type {p.suffix!r}; use a .csv or .json decisions export")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{p}: unreadable decisions file ({exc}); export it again") from None
    out = []
    for line, r in enumerate(rows, start=2):
        r = {k: (None if v in ("", None) or (isinstance(v, float) and np.isnan(v)) else v) for k, v in r.items()}
        missing = [c for c in _REQUIRED_IMPORT if r.get(c) is None]
        if missing:
            raise AnnotationError(f"{p}: row {line}: missing {missing}; every decision needs {list(_REQUIRED_IMPORT)}")
        if r["decision"] not in (*DECISIONS, UNDO):
            raise AnnotationError(f"{p}: row {line}: decision {r['decision']!r} is not one of {[*DECISIONS, UNDO]}")
        try:
            for k in ("id", "sample_index", "given_label", "new_label", "rank", "undoes"):
                r[k] = _int_or_none(r.get(k))
            r["score"] = _float_or_none(r.get("score"))
        except (TypeError, ValueError):
            raise AnnotationError(f"{p}: row {line}: a numeric field is not a number; fix or re-export the file") from None
        if r["decision"] in ("keep", "accept", "relabel") and r["new_label"] is None:
            raise AnnotationError(f"{p}: row {line}: decision {r['decision']!r} has no new_label")
        out.append(r)
    if all(r.get("id") is not None for r in out):
        out.sort(key=lambda r: r["id"])
    return out


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Integer columns as nullable Int64 (so exports write ``5``, not ``5.0``)."""
    for c in ("id", "sample_index", "given_label", "new_label", "rank", "undoes"):
        df[c] = df[c].astype("Int64")
    df["score"] = df["score"].astype("float64")
    return df


def _int_or_none(v: Any) -> int | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, str):
        v = float(v) if "." in v else int(v)
    return int(v)


def _float_or_none(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if np.isnan(f) else f


def _json_value(v: Any) -> Any:
    if v is pd.NA or v is None:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and np.isnan(v):
        return None
    return v
