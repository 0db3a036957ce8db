"""The decision vocabulary and the decisions database's schema, with its migrations (stdlib only).

Schema versions (``meta.schema_version``):

* 1: ``keep`` / ``accept`` / ``relabel`` / ``unsure`` / ``undo`` rows.
* 2: adds the ``exclude`` decision (remove the sample from training), a free-text ``comment`` per
  decision and ``batch`` (the id shared by the rows of one bulk action, undone together).

A version-1 database is migrated in place when it is opened (:func:`migrate`): SQLite cannot change
a ``CHECK`` constraint, so the table is rebuilt (copy every row with its id, drop, rename) inside the
caller's ``BEGIN IMMEDIATE`` transaction: a crash leaves the old table untouched.
"""

from __future__ import annotations

import sqlite3

DECISIONS = ("keep", "accept", "relabel", "unsure", "exclude")
#: decisions that assign no label (``new_label`` is NULL)
NO_LABEL = ("unsure", "exclude")
UNDO = "undo"
EXPORT_FORMAT = "influence-explorer-decisions"
_REQUIRED_IMPORT = ("sample_index", "decision", "reviewer", "created_at")
SCHEMA_VERSION = 2
#: the longest comment kept with a decision (characters)
MAX_COMMENT = 1000

_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    run          TEXT,
    sample_index INTEGER NOT NULL CHECK (sample_index >= 0),
    decision     TEXT NOT NULL CHECK (decision IN ('keep', 'accept', 'relabel', 'unsure', 'exclude', 'undo')),
    given_label  INTEGER,
    new_label    INTEGER,
    reviewer     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    method       TEXT,
    score        REAL,
    rank         INTEGER,
    undoes       INTEGER REFERENCES decisions(id),
    comment      TEXT,
    batch        TEXT
)"""

SCHEMA = _TABLE.format(name="decisions") + """;
CREATE INDEX IF NOT EXISTS decisions_sample ON decisions(sample_index, id);
CREATE INDEX IF NOT EXISTS decisions_key ON decisions(created_at, reviewer);
CREATE INDEX IF NOT EXISTS decisions_batch ON decisions(batch);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

_V1_COLUMNS = ("id", "run", "sample_index", "decision", "given_label", "new_label", "reviewer", "created_at",
               "method", "score", "rank", "undoes")


class AnnotationError(ValueError):
    """A bad decision, import file or database; the message names the file/field and the fix."""


def stored_version(conn: sqlite3.Connection) -> int | None:
    """The database's schema version: None for an empty file, 1 for a database without the
    version-2 columns (whatever its ``meta`` says), else ``meta.schema_version``."""
    cols = [r[1] for r in conn.execute("PRAGMA table_info(decisions)").fetchall()]
    if not cols:
        return None
    if "comment" not in cols:
        return 1
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0]) if row else SCHEMA_VERSION
    except (TypeError, ValueError):
        return SCHEMA_VERSION


def migrate(conn: sqlite3.Connection, path: object) -> int:
    """Bring the database to :data:`SCHEMA_VERSION` inside the caller's write transaction; returns the
    version found (None -> created). A database from a newer version is refused, untouched."""
    found = stored_version(conn)
    if found is not None and found > SCHEMA_VERSION:
        raise AnnotationError(f"{path}: decisions database of schema version {found}, newer than this explorer's "
                              f"({SCHEMA_VERSION}); open it with a newer influence-explorer (the file is unchanged)")
    if found == 1:
        cols = ", ".join(_V1_COLUMNS)
        conn.execute(_TABLE.format(name="decisions_v2"))
        conn.execute(f"INSERT INTO decisions_v2 ({cols}) SELECT {cols} FROM decisions ORDER BY id")
        conn.execute("DROP TABLE decisions")
        conn.execute("ALTER TABLE decisions_v2 RENAME TO decisions")
    for stmt in SCHEMA.split(";"):
        if stmt.strip():
            conn.execute(stmt)
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    if found == 1:
        from datetime import datetime, timezone

        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('migrated_from_1_at', ?)",
                     (datetime.now(timezone.utc).isoformat(timespec="seconds"),))
    return found or 0
