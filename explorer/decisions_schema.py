"""The decision vocabulary shared by the annotation store and its import/export (no other imports)."""

from __future__ import annotations

DECISIONS = ("keep", "accept", "relabel", "unsure")
UNDO = "undo"
EXPORT_FORMAT = "influence-explorer-decisions"
_REQUIRED_IMPORT = ("sample_index", "decision", "reviewer", "created_at")


class AnnotationError(ValueError):
    """A bad decision, import file or database; the message names the file/field and the fix."""
