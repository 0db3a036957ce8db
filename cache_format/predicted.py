"""Reading the top-k toward the *predicted* label of misclassified test points (numpy only, no torch).

Precompute (``precompute.store.predicted_label``) writes, per method, six arrays (names in
:mod:`cache_format.names`): the misclassified test ids ``predicted_rows [n_mis]`` (ascending), the label
each was scored toward ``predicted_labels [n_mis]`` and ``predicted_(pro|op)ponents(_scores) [n_mis, k]``.
Runs built before them, or methods that cannot score another label, have none: :func:`load_predicted`
returns ``None`` and the explorer says "not precomputed for this run". A cache is untrusted data, so
everything is checked (shapes, dtypes, ids in range, rows ascending, finite scores) before use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache_format import names as fmt
from cache_format.runs import CacheProblem, RunCache, build_command

FILES = (fmt.PREDICTED_ROWS, fmt.PREDICTED_LABELS, fmt.PREDICTED_PROPONENTS, fmt.PREDICTED_PROPONENT_SCORES,
         fmt.PREDICTED_OPPONENTS, fmt.PREDICTED_OPPONENT_SCORES)


@dataclass(frozen=True)
class PredictedTopK:
    """One method's predicted-label top-k: ``rows, labels [n_mis]``, ids / scores ``[n_mis, k]``."""

    rows: np.ndarray
    labels: np.ndarray
    pro: np.ndarray
    pro_scores: np.ndarray
    opp: np.ndarray
    opp_scores: np.ndarray

    def position(self, test: int) -> int | None:
        """Where test point ``test`` is in :attr:`rows`, or ``None`` when it was not scored."""
        i = int(np.searchsorted(self.rows, int(test)))
        return i if i < len(self.rows) and int(self.rows[i]) == int(test) else None


def _problem(run: RunCache, rel: str, why: str) -> CacheProblem:
    return CacheProblem("damaged", run.path, f"this run is damaged: {run.path.name}/{rel} {why}. Rebuild it with: "
                        f"{build_command(run.path.name)} --overwrite")


def load_predicted(run: RunCache, method: str) -> PredictedTopK | None:
    """The checked arrays of ``method``, or ``None`` when the run has none of them (an older run, a
    method that does not support it). Raises :class:`CacheProblem` ("damaged") naming the first bad
    file when only some are present or one does not hold what it should."""
    folder = Path(fmt.METHODS_DIR) / method
    present = [name for name in FILES if (run.path / folder / f"{name}.npy").is_file()]
    if not present:
        return None
    if len(present) != len(FILES):
        missing = next(n for n in FILES if n not in present)
        raise _problem(run, f"{folder}/{missing}.npy", "is missing (the other predicted-label arrays are there)")
    try:
        a = {name: np.asarray(run.load_npy(folder / f"{name}.npy")) for name in FILES}
    except (ValueError, OSError) as exc:
        raise _problem(run, f"{folder}", f"holds an unreadable predicted-label array ({type(exc).__name__})") from None

    def rel(name: str) -> str:
        return f"{folder}/{name}.npy"

    rows, labels = a[fmt.PREDICTED_ROWS], a[fmt.PREDICTED_LABELS]
    n_classes = len(run.class_names)
    for name, arr, hi in ((fmt.PREDICTED_ROWS, rows, run.n_test), (fmt.PREDICTED_LABELS, labels, n_classes)):
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise _problem(run, rel(name), f"has shape {list(arr.shape)} {arr.dtype}, not [n] integers")
        if arr.size and (arr.min() < 0 or arr.max() >= hi):
            raise _problem(run, rel(name), f"holds values outside 0..{hi - 1}")
    if len(labels) != len(rows):
        raise _problem(run, rel(fmt.PREDICTED_LABELS), f"has {len(labels)} rows, expected {len(rows)}")
    if rows.size and not (np.diff(rows.astype(np.int64)) > 0).all():
        raise _problem(run, rel(fmt.PREDICTED_ROWS), "is not strictly ascending")
    for ids, vals in ((fmt.PREDICTED_PROPONENTS, fmt.PREDICTED_PROPONENT_SCORES),
                      (fmt.PREDICTED_OPPONENTS, fmt.PREDICTED_OPPONENT_SCORES)):
        i, s = a[ids], a[vals]
        if i.ndim != 2 or i.shape[0] != len(rows) or i.dtype.kind not in "iu":
            raise _problem(run, rel(ids), f"has shape {list(i.shape)} {i.dtype}, expected [{len(rows)}, k] ids")
        if s.shape != i.shape or s.dtype.kind != "f":
            raise _problem(run, rel(vals), f"has shape {list(s.shape)} {s.dtype}, expected {list(i.shape)} floats")
        if i.size and (i.min() < 0 or i.max() >= run.n_train):
            raise _problem(run, rel(ids), f"holds training ids outside 0..{run.n_train - 1}")
        if s.size and not np.isfinite(s).all():
            raise _problem(run, rel(vals), "contains NaN or infinite values")
    return PredictedTopK(rows.astype(np.int64), labels.astype(np.int64), a[fmt.PREDICTED_PROPONENTS],
                         a[fmt.PREDICTED_PROPONENT_SCORES], a[fmt.PREDICTED_OPPONENTS],
                         a[fmt.PREDICTED_OPPONENT_SCORES])
