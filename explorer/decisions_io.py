"""Reading an exported decisions file (CSV or JSON) strictly, in memory: every row checked before any is written.

An import comes from a file a reviewer uploads (or names): its bytes are parsed here and never
written anywhere, and its file name is used only to pick the parser and to name it in messages.
Each error is one line naming the row and the field: ``decisions.csv: row 3, field 'new_label': 99
is not a class of this run (0..9)``. Excel's UTF-8 CSVs (with a byte-order mark) are read too.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from explorer.decisions_schema import (
    _REQUIRED_IMPORT,
    DECISIONS,
    EXPORT_FORMAT,
    MAX_COMMENT,
    NO_LABEL,
    UNDO,
    AnnotationError,
)

_INT = re.compile(r"^[+-]?\d+(\.0*)?$")
_INT_FIELDS = ("id", "sample_index", "given_label", "new_label", "rank", "undoes")
_TEXT_FIELDS = ("run", "decision", "reviewer", "created_at", "method", "comment", "batch")
_MAX_TEXT = MAX_COMMENT


def parse_export(data: bytes, name: str, n_train: int | None = None, n_classes: int | None = None) -> list[dict[str, Any]]:
    """The validated rows of an exported decisions file's bytes, in id order.

    ``name`` (e.g. the upload's file name) picks the format by its suffix (``.csv`` / ``.json``;
    anything else is refused) and names the file in messages. With ``n_train`` / ``n_classes``,
    sample indices and labels outside the run are refused.
    """
    suffix = Path(str(name)).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise AnnotationError(f"{name}: unknown file type {suffix!r}; use a .csv or .json decisions export")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AnnotationError(f"{name}: not UTF-8 text; export it again from the review page "
                              "(or save it from Excel as 'CSV UTF-8')") from None
    rows, first = (_json_rows(text, name), 1) if suffix == ".json" else (_csv_rows(text, name), 2)
    where = "decision" if suffix == ".json" else "row"
    out = [_row(r, f"{name}: {where} {n}", n_train, n_classes) for n, r in enumerate(rows, start=first)]
    if all(r.get("id") is not None for r in out):
        out.sort(key=lambda r: r["id"])
    seen: set[int] = set()
    for r in out:
        if r["decision"] == UNDO and (r.get("undoes") is None or r["undoes"] not in seen):
            raise AnnotationError(f"{name}: undo row for sample {r['sample_index']} refers to decision id "
                                  f"{r.get('undoes')!r} that is not earlier in the file; export it again")
        if r.get("id") is not None:
            seen.add(r["id"])
    return out


def read_export(path: str | Path, n_train: int | None = None, n_classes: int | None = None) -> list[dict[str, Any]]:
    """Rows of an exported decisions file on disk (see :func:`parse_export`)."""
    p = Path(path)
    if not p.is_file():
        raise AnnotationError(f"{p}: decisions file not found; pass a CSV or JSON exported from the review page")
    return parse_export(p.read_bytes(), str(p), n_train, n_classes)


def _json_rows(text: str, name: str) -> list[Any]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise AnnotationError(f"{name}: unreadable decisions file ({exc}); export it again") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT or not isinstance(doc.get("decisions"), list):
        raise AnnotationError(f"{name}: not a decisions export (expected format {EXPORT_FORMAT!r} with a "
                              "'decisions' list); export it again from the review page")
    return doc["decisions"]


#: a spreadsheet runs a cell that starts with one of these as a formula (CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_guard(value: Any) -> Any:
    """A text cell safe to open in a spreadsheet: one that starts a formula gets a leading ``'``."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def csv_unguard(value: Any) -> Any:
    """The text :func:`csv_guard` was given (reading an export back)."""
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith(_FORMULA_START):
        return value[1:]
    return value


def _csv_rows(text: str, name: str) -> list[dict[str, Any]]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        fields = [f.strip() for f in (reader.fieldnames or [])]
        missing = [c for c in _REQUIRED_IMPORT if c not in fields]
        if missing:
            raise AnnotationError(f"{name}: missing columns {missing}; a decisions CSV needs "
                                  f"{list(_REQUIRED_IMPORT)} (export it from the review page)")
        reader.fieldnames = fields
        return [{k: csv_unguard(v) if k in _TEXT_FIELDS else v for k, v in r.items()} for r in reader]
    except csv.Error as exc:
        raise AnnotationError(f"{name}: unreadable CSV ({exc}); export it again") from None


def _row(raw: Any, where: str, n_train: int | None, n_classes: int | None) -> dict[str, Any]:
    """One checked row: integers are integers, labels are classes of the run, text is text."""
    if not isinstance(raw, dict):
        raise AnnotationError(f"{where}: not an object with the decision's fields")
    r = {k: (None if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) else v)
         for k, v in raw.items() if isinstance(k, str)}
    missing = [c for c in _REQUIRED_IMPORT if r.get(c) is None]
    if missing:
        raise AnnotationError(f"{where}: missing {missing}; every decision needs {list(_REQUIRED_IMPORT)}")
    out: dict[str, Any] = {}
    for k in _TEXT_FIELDS:
        v = r.get(k)
        if v is not None and (not isinstance(v, str) or len(v) > _MAX_TEXT):
            raise AnnotationError(f"{where}, field {k!r}: {_show(v)} is not a short text")
        out[k] = v.strip() if isinstance(v, str) else None
    if out["decision"] not in (*DECISIONS, UNDO):
        raise AnnotationError(f"{where}, field 'decision': {_show(out['decision'])} is not one of {[*DECISIONS, UNDO]}")
    if not out["reviewer"]:
        raise AnnotationError(f"{where}, field 'reviewer': empty; every decision needs its reviewer's name")
    for k in _INT_FIELDS:
        out[k] = _integer(r.get(k), f"{where}, field {k!r}")
    out["score"] = _number(r.get("score"), f"{where}, field 'score'")
    for k, lo, hi, what in (("id", 0, None, "a row id"), ("undoes", 0, None, "a row id"),
                            ("sample_index", 0, n_train, "a training sample of this run"),
                            ("given_label", 0, n_classes, "a class of this run"),
                            ("new_label", 0, n_classes, "a class of this run"), ("rank", 1, None, "a rank")):
        v = out[k]
        if v is not None and (v < lo or (hi is not None and v >= hi)):
            span = f"{lo}..{hi - 1}" if hi is not None else f">= {lo}"
            raise AnnotationError(f"{where}, field {k!r}: {v} is not {what} ({span})")
    if out["decision"] in ("keep", "accept", "relabel") and out["new_label"] is None:
        raise AnnotationError(f"{where}, field 'new_label': decision {out['decision']!r} needs the label it assigns")
    if out["decision"] in NO_LABEL:
        out["new_label"] = None
    out["comment"] = out["comment"] or None
    return out


def _integer(v: Any, where: str) -> int | None:
    """An integer field: ``5``, ``"5"`` or ``5.0``; ``1.7``, ``"x"`` or ``true`` are refused."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise AnnotationError(f"{where}: {_show(v)} is not an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and _INT.match(v.strip()):
        return int(v.strip().split(".")[0])
    raise AnnotationError(f"{where}: {_show(v)} is not an integer")


def _number(v: Any, where: str) -> float | None:
    if v is None:
        return None
    try:
        if isinstance(v, bool):
            raise TypeError
        f = float(v)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: {_show(v)} is not a number") from None
    if math.isinf(f):
        raise AnnotationError(f"{where}: {_show(v)} is not a finite number")
    return None if math.isnan(f) else f


def _show(v: Any) -> str:
    """A value for a one-line message (shortened)."""
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."
