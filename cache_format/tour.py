"""Reading a run's presenter tour, ``arrays/tour.json`` (json only, no torch).

Written by ``precompute.tour``::

    {"format": 1, "method": "exact", "entries": [
        {"kind": "confident_mistake", "split": "test", "index": 12, "method": "exact", "page": "influence",
         "view": "predicted", "title": "Test #12: a confident mistake", "reason": "97% sure this 1 is a 7; ..."},
        {"kind": "disagreement", "split": "test", "index": 5, "method": "exact", "b": "tracin",
         "page": "compare", "title": "...", "reason": "..."}, ...]}

The file is untrusted data: :func:`read_tour` checks every field (ids in range, methods of the run,
known pages and views, bounded text) and raises :class:`TourProblem` naming the entry and field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cache_format import names as fmt
from cache_format.runs import RunCache, build_command

MAX_BYTES = 256 << 10
MAX_ENTRIES = 50
MAX_TEXT = 400
PAGES = ("influence", "compare")
VIEWS = ("true", "predicted")
SPLITS = ("test", "train")


class TourProblem(ValueError):
    """A tour file that cannot be used; the message names the file, the entry and field, and the fix."""


@dataclass(frozen=True)
class TourEntry:
    """One example: which sample (``split``, ``index``), where it opens (``page``: the influence view or
    compare ``method`` vs ``b``), which label the influence view explains (``view``), and why."""

    kind: str
    split: str
    index: int
    method: str
    page: str
    title: str
    reason: str
    view: str = "true"
    b: str | None = None


def read_tour(run: RunCache) -> list[TourEntry] | None:
    """The checked entries of ``run``'s tour; ``None`` when the run has no tour (built before tours)."""
    path = run.path / fmt.TOUR
    shown = f"{run.path.name}/{fmt.TOUR}"
    fix = f"Rebuild the run with: {build_command(run.path.name)} --overwrite"
    if not path.is_file():
        return None

    def bad(why: str) -> TourProblem:
        return TourProblem(f"{shown} {why}. {fix}")

    try:
        if path.stat().st_size > MAX_BYTES:
            raise bad(f"is larger than {MAX_BYTES // 1024} KB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, TourProblem):
            raise
        raise bad(f"is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != fmt.TOUR_FORMAT:
        raise bad(f"is not a tour of format {fmt.TOUR_FORMAT} (a JSON object with \"format\": {fmt.TOUR_FORMAT})")
    entries = data.get("entries")
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise bad(f"field 'entries' is not a list of at most {MAX_ENTRIES} examples")
    return [_entry(run, i, e, bad) for i, e in enumerate(entries)]


def _entry(run: RunCache, i: int, e: object, bad) -> TourEntry:
    if not isinstance(e, dict):
        raise bad(f"entry {i} is not an object")

    def text(key: str, default: str | None = None) -> str:
        v = e.get(key, default)
        if not isinstance(v, str) or not v or len(v) > MAX_TEXT:
            raise bad(f"entry {i} field {key!r} is not a text of 1 to {MAX_TEXT} characters")
        return v

    def choice(key: str, options, default: str | None = None) -> str:
        v = e.get(key, default)
        if v not in options:
            raise bad(f"entry {i} field {key!r} is {str(v)[:40]!r}, expected one of {', '.join(map(str, options))}")
        return v

    split = choice("split", SPLITS)
    index, n = e.get("index"), run.n_test if split == "test" else run.n_train
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
        raise bad(f"entry {i} field 'index' is {str(index)[:40]!r}, not a {split} id in 0..{n - 1}")
    method = choice("method", run.methods)
    page = choice("page", PAGES, "influence")
    b = None
    if page == "compare":
        b = choice("b", [m for m in run.methods if m != method])
        if split != "test":
            raise bad(f"entry {i} opens the compare view for a training sample (it compares test points)")
    return TourEntry(kind=text("kind"), split=split, index=index, method=method, page=page, title=text("title"),
                     reason=text("reason"), view=choice("view", VIEWS, "true"), b=b)
