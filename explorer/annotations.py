"""Reviewers' label decisions: an append-only SQLite log beside the cache (stdlib only, torch-free).

File: ``<cache-dir>/<run>.annotations.sqlite``, *beside* the run folder, so rebuilding or deleting
a run's cache never touches its decisions. WAL journal, ``synchronous=FULL``, one ``BEGIN
IMMEDIATE`` transaction per decision and a busy timeout, so several reviewers (processes) can
write at once and a killed writer loses nothing it committed.

History is append-only. A sample's *current* decision is its latest decision that has not been
undone; an undo is itself a row (``decision = 'undo'``, ``undoes = <id>``), so nothing is ever
deleted or updated.

Decisions: ``keep`` (the given label is right), ``accept`` (take the suggested label),
``relabel`` (a label the reviewer chose), ``unsure``, ``exclude`` (remove the sample from training).
``new_label`` is the label the decision assigns (the given label for ``keep``; NULL for ``unsure``
and ``exclude``). Every decision may carry a free-text ``comment``; the rows of one bulk action share
a ``batch`` id and are undone together. The schema and its migration from version 1 live in
:mod:`explorer.decisions_schema`.
"""

from __future__ import annotations

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
from cache_format.names import is_safe_name
from explorer.decisions_schema import (
    DECISIONS,
    EXPORT_FORMAT,
    MAX_COMMENT,
    NO_LABEL,
    SCHEMA_VERSION,
    UNDO,
    AnnotationError,
    migrate,
)

COLUMNS = ("id", "run", "sample_index", "decision", "given_label", "new_label", "reviewer", "created_at",
           "method", "score", "rank", "undoes", "comment", "batch")
#: rows written per transaction by an import (a concurrent decision waits for one batch at most)
IMPORT_BATCH = 500

_INSERT = ("INSERT INTO decisions(run, sample_index, decision, given_label, new_label, reviewer, created_at, "
           "method, score, rank, comment, batch) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")
_EFFECTIVE = ("SELECT * FROM decisions WHERE decision != 'undo' "
              "AND id NOT IN (SELECT undoes FROM decisions WHERE undoes IS NOT NULL)")


def db_path(cache_dir: str | Path, run: str) -> Path:
    """Where run ``run``'s decisions live: beside (not inside) the run folder, in ``cache_dir``.

    ``run`` must be a run name (:func:`cache_format.names.is_safe_name`), so the database can never
    be created outside the cache folder (``../x``, an absolute path, a hidden name are refused).
    """
    if not is_safe_name(run):
        raise AnnotationError(f"{run!r} is not a run name; decisions are kept only for runs in the cache folder")
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
        migrate(self.conn, self.path)
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
               rank: int | None = None, created_at: str | None = None, comment: str | None = None) -> int:
        """Append one decision in its own transaction; returns its row id."""
        row = self._row(sample_index, decision, new_label, reviewer, given_label, method, score, rank,
                        created_at, comment, None)
        with self._write() as c:
            return int(c.execute(_INSERT, row).lastrowid)

    def record_many(self, samples: Iterable[dict[str, Any]], decision: str, reviewer: str,
                    comment: str | None = None) -> str:
        """One bulk action: ``decision`` on every sample (dicts with ``sample_index``, ``new_label`` and
        optionally ``given_label``, ``method``, ``score``, ``rank``), all rows in ONE transaction (all
        or none) under a new batch id, which is returned; :meth:`undo_last` retracts them together."""
        import uuid

        batch = f"bulk-{uuid.uuid4().hex[:12]}"
        when = now_iso()
        rows = [self._row(s["sample_index"], decision, s.get("new_label"), reviewer, s.get("given_label"),
                          s.get("method"), s.get("score"), s.get("rank"), when, comment, batch) for s in samples]
        if not rows:
            raise AnnotationError("bulk decision: no samples selected; change the filters so the queue shows some")
        with self._write() as c:
            c.executemany(_INSERT, rows)
        return batch

    def _row(self, sample_index: Any, decision: str, new_label: Any, reviewer: str, given_label: Any,
             method: str | None, score: Any, rank: Any, created_at: str | None, comment: str | None,
             batch: str | None) -> tuple:
        """A checked row for :data:`_INSERT` (the message names the field and the fix)."""
        if decision not in DECISIONS:
            raise AnnotationError(f"decision: {decision!r} is not one of {list(DECISIONS)}")
        if not reviewer or not str(reviewer).strip():
            raise AnnotationError("reviewer: a reviewer name is required; enter your name on the review page")
        if isinstance(sample_index, bool) or int(sample_index) != sample_index or sample_index < 0:
            raise AnnotationError(f"sample_index: {sample_index!r} is not a training sample index (an integer >= 0)")
        if decision in NO_LABEL:
            new_label = None
        elif new_label is None:
            raise AnnotationError(f"new_label: decision {decision!r} needs the label it assigns")
        comment = (str(comment).strip() or None) if comment is not None else None
        if comment is not None and len(comment) > MAX_COMMENT:
            raise AnnotationError(f"comment: {len(comment)} characters, more than {MAX_COMMENT}; shorten it")
        return (self.run, int(sample_index), decision, _int_or_none(given_label), _int_or_none(new_label),
                str(reviewer).strip(), created_at or now_iso(), method, _float_or_none(score), _int_or_none(rank),
                comment, batch)

    def undo_last(self, reviewer: str | None = None) -> dict[str, Any] | None:
        """Retract the latest still-effective decision (of ``reviewer``, if given) and, when it was part
        of a bulk action, every still-effective row of that batch; returns the latest one with
        ``undone`` (how many rows were retracted), or None."""
        with self._write() as c:
            q = _EFFECTIVE + (" AND reviewer = ?" if reviewer else "") + " ORDER BY id DESC LIMIT 1"
            last = c.execute(q, (reviewer,) if reviewer else ()).fetchone()
            if last is None:
                return None
            rows = [last]
            if last["batch"]:
                rows = c.execute(f"SELECT * FROM ({_EFFECTIVE}) WHERE batch = ? ORDER BY id DESC",
                                 (last["batch"],)).fetchall()
            self._undo_rows(c, rows, reviewer)
            return {**dict(last), "undone": len(rows)}

    def undo_batch(self, batch: str, reviewer: str | None = None) -> int:
        """Retract every still-effective row of bulk action ``batch`` (one transaction); returns how many."""
        with self._write() as c:
            rows = c.execute(f"SELECT * FROM ({_EFFECTIVE}) WHERE batch = ? ORDER BY id DESC", (batch,)).fetchall()
            self._undo_rows(c, rows, reviewer)
            return len(rows)

    def _undo_rows(self, c: sqlite3.Connection, rows: list[sqlite3.Row], reviewer: str | None) -> None:
        when = now_iso()
        c.executemany("INSERT INTO decisions(run, sample_index, decision, reviewer, created_at, undoes, batch) "
                      "VALUES (?,?,?,?,?,?,?)", [(self.run, r["sample_index"], UNDO, reviewer or r["reviewer"],
                                                  when, r["id"], r["batch"]) for r in rows])

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
        """``'pending'`` / ``'reviewed'`` / ``'unsure'`` for every training index (``exclude`` is a
        decision, so ``'reviewed'``)."""
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
        """The history as CSV; text cells that a spreadsheet would run as a formula are quoted with ``'``
        (reading the export back removes it)."""
        from explorer.decisions_io import _TEXT_FIELDS, csv_guard

        df = self.export_frame()
        for col in (c for c in _TEXT_FIELDS if c in df.columns):
            df[col] = df[col].map(csv_guard)
        text = df.to_csv(index=False)
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

    def import_file(self, path: str | Path, n_train: int | None = None, n_classes: int | None = None) -> int:
        """Append the decisions (and undos) of an exported CSV/JSON file; returns rows added (see
        :meth:`import_bytes`)."""
        from explorer.decisions_io import read_export

        return self.import_rows(read_export(path, n_train, n_classes))

    def import_bytes(self, data: bytes, name: str, n_train: int | None = None, n_classes: int | None = None) -> int:
        """Append the decisions of an uploaded export, parsed in memory (``name`` picks CSV or JSON and
        names the file in messages; nothing is written to disk but the database). Returns rows added.

        Every row is checked first (:func:`explorer.decisions_io.parse_export`: a bad one imports
        nothing); rows already present (same sample, decision, label, reviewer and time) are skipped,
        so importing a file twice adds nothing.
        """
        from explorer.decisions_io import parse_export

        return self.import_rows(parse_export(data, name, n_train, n_classes))

    def import_rows(self, rows: list[dict[str, Any]]) -> int:
        """Write checked rows in transactions of :data:`IMPORT_BATCH` rows, so that another reviewer's
        decision waits for one batch (milliseconds), never for the whole import. An import stopped
        half-way (a crash) leaves a prefix; importing the file again adds the rest."""
        added = 0
        id_map: dict[int, int] = {}
        for start in range(0, len(rows), IMPORT_BATCH):
            with self._write() as c:
                for r in rows[start:start + IMPORT_BATCH]:
                    undoes = id_map.get(r["undoes"]) if r["decision"] == UNDO else None
                    if r["decision"] == UNDO and undoes is None:
                        raise AnnotationError(f"undo row for sample {r['sample_index']} refers to decision id "
                                              f"{r.get('undoes')!r} that is not earlier in the file; export it again")
                    key = (r["created_at"], r["reviewer"], r["sample_index"], r["decision"], r.get("new_label"))
                    hit = c.execute("SELECT id FROM decisions WHERE created_at = ? AND reviewer = ? AND sample_index = ? "
                                    "AND decision = ? AND new_label IS ?", key).fetchone()
                    if hit is None:
                        cur = c.execute(
                            "INSERT INTO decisions(run, sample_index, decision, given_label, new_label, reviewer, "
                            "created_at, method, score, rank, undoes, comment, batch) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            (r.get("run") or self.run, r["sample_index"], r["decision"], r.get("given_label"),
                             r.get("new_label"), r["reviewer"], r["created_at"], r.get("method"), r.get("score"),
                             r.get("rank"), undoes, r.get("comment"), r.get("batch")))
                        new_id = int(cur.lastrowid)
                        added += 1
                    else:
                        new_id = int(hit[0])
                    if r.get("id") is not None:
                        id_map[int(r["id"])] = new_id
        return added

    # ----------------------------------------------------------------------------- cleaned labels
    def cleaned_labels(self, given_labels: Iterable[int]) -> pd.DataFrame:
        """``index,label`` for every training sample: the current decision's label, else the given one
        (an excluded sample keeps its given label here: see :meth:`excluded`)."""
        labels = np.asarray(list(given_labels), np.int64).copy()
        cur = self.current()
        cur = cur[cur["new_label"].notna() & (cur["sample_index"] < len(labels))]
        labels[cur["sample_index"].to_numpy(np.int64)] = cur["new_label"].to_numpy(np.int64)
        return pd.DataFrame({"index": np.arange(len(labels), dtype=np.int64), "label": labels})

    def excluded(self, n_train: int | None = None) -> np.ndarray:
        """Training indices whose current decision is ``exclude`` (sorted ``[m]`` int64)."""
        cur = self.current()
        idx = cur.loc[cur["decision"] == "exclude", "sample_index"].to_numpy(np.int64)
        return np.sort(idx[idx < n_train] if n_train is not None else idx)

    def excluded_csv(self, n_train: int | None = None) -> str:
        """The excluded samples as a CSV with one ``index`` column."""
        return "index\n" + "".join(f"{i}\n" for i in self.excluded(n_train))

    def write_cleaned_labels(self, path: str | Path, given_labels: Iterable[int]) -> Path:
        """Write the cleaned labels CSV that ``precompute --labels-override FILE`` reads (atomically)."""
        atomic_write(path, self.cleaned_labels(given_labels).to_csv(index=False))
        return Path(path)


# ------------------------------------------------------------------------------------------ helpers
def read_export(path: str | Path, n_train: int | None = None, n_classes: int | None = None) -> list[dict[str, Any]]:
    """Rows of an exported decisions file (``.csv`` or ``.json``), validated, in id order
    (:func:`explorer.decisions_io.read_export`)."""
    from explorer.decisions_io import read_export as read

    return read(path, n_train, n_classes)


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
