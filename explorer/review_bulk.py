"""The review page's bulk action: one decision for every sample the filtered queue shows, asked for
confirmation first, written in one transaction, undone together.

Only for a filtered queue (a given label, a given -> suggested pair or a map selection): the whole
training set is never one click away. The confirmation names the count and is tied to the exact
samples it was asked for: if the queue changes before the click (another reviewer decided some of
them), it is asked again.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from explorer.annotations import AnnotationError, AnnotationStore
from explorer.decisions_schema import MAX_COMMENT
from explorer.text import md_escape

K = "review_"  # the review page's session-state prefix
BULK_DECISIONS = {"exclude": "Exclude from training", "accept": "Accept the suggested labels",
                  "keep": "Keep the given labels", "unsure": "Mark unsure"}
_PENDING = K + "bulk_pending"
_LAST = K + "bulk_last"


def bulk_rows(q: pd.DataFrame, decision: str, given: np.ndarray, suggested: np.ndarray,
              method: str) -> list[dict]:
    """The rows of a bulk ``decision`` on queue ``q`` (``index``, ``rank``, ``score`` columns):
    ``new_label`` is the given label for keep, the suggested one for accept, none otherwise."""
    idx = q["index"].to_numpy(np.int64)
    new = {"keep": given[idx], "accept": suggested[idx]}.get(decision)
    return [{"sample_index": int(i), "given_label": int(given[i]), "new_label": None if new is None else int(new[n]),
             "method": method, "score": float(s), "rank": int(r)}
            for n, (i, s, r) in enumerate(zip(idx, q["score"], q["rank"], strict=True))]


def _apply(store: AnnotationStore, rows: list[dict], decision: str, reviewer: str) -> None:
    comment = st.session_state.get(K + "bulk_comment") or None
    st.session_state.pop(_PENDING, None)
    try:
        batch = store.record_many(rows, decision, reviewer, comment=comment)
    except (AnnotationError, OSError) as exc:
        st.session_state[K + "error"] = f"bulk decision NOT saved: {exc}"
        return
    except Exception as exc:  # noqa: BLE001 - sqlite3 errors: nothing was written (one transaction)
        st.session_state[K + "error"] = f"bulk decision NOT saved ({type(exc).__name__}: {exc}); try again"
        return
    st.session_state[_LAST] = {"batch": batch, "n": len(rows), "decision": decision}
    st.session_state[K + "flash"] = f"saved {decision} on {len(rows)} samples"


def _undo(store: AnnotationStore, batch: str, reviewer: str) -> None:
    try:
        n = store.undo_batch(batch, reviewer)
    except Exception as exc:  # noqa: BLE001 - keep the page, say why
        st.session_state[K + "error"] = f"undo failed ({type(exc).__name__}: {exc})"
        return
    st.session_state.pop(_LAST, None)
    st.session_state[K + "flash"] = f"undid the bulk action ({n} decisions)"


def bulk_panel(store: AnnotationStore, q: pd.DataFrame, given: np.ndarray, suggested: np.ndarray, method: str,
               reviewer: str, filtered: bool, what: str) -> None:
    """The "Bulk action" expander for the queue ``q`` as shown (filters and status tab applied);
    ``what`` describes the filter in the confirmation (e.g. ``given 3 → suggested 8, pending``)."""
    last = st.session_state.get(_LAST)
    n = len(q)
    with st.expander(f"Bulk action: all {n:,} samples shown", expanded=_PENDING in st.session_state or bool(last),
                     icon=":material/done_all:"):
        if last:
            st.success(f"Last bulk action: **{md_escape(last['decision'])}** on {last['n']:,} samples.")
            st.button("Undo the bulk action", key=K + "bulk_undo", icon=":material/undo:", on_click=_undo,
                      args=(store, last["batch"], reviewer), width="stretch")
        if not filtered:
            st.caption("Pick a given label or a given → suggested pair in the sidebar (or send a selection from "
                       "the embedding map) to decide a whole group at once.")
            return
        if n == 0:
            st.caption("No samples in this queue.")
            return
        decision = st.selectbox("Decision for every sample shown", list(BULK_DECISIONS), key=K + "bulk_decision",
                                format_func=BULK_DECISIONS.get)
        st.text_input("Comment (optional, saved with each decision)", key=K + "bulk_comment", max_chars=MAX_COMMENT)
        ids = tuple(int(i) for i in q["index"])
        pending = st.session_state.get(_PENDING)
        if pending is not None and (pending["ids"] != ids or pending["decision"] != decision):
            st.session_state.pop(_PENDING, None)  # the queue or the choice changed since: ask again
            pending = None
        if pending is None:
            st.button(f"Mark all {n:,} shown: {BULK_DECISIONS[decision].lower()}", key=K + "bulk_ask",
                      on_click=lambda: st.session_state.update({_PENDING: {"ids": ids, "decision": decision}}),
                      width="stretch")
            return
        st.warning(f"Record **{md_escape(decision)}** for **{n:,}** samples ({md_escape(what)})? "
                   "They are written together and can be undone together.")
        st.button(f"Confirm: {decision} {n:,} samples", key=K + "bulk_confirm", type="primary", on_click=_apply,
                  args=(store, bulk_rows(q, decision, given, suggested, method), decision, reviewer), width="stretch")
        st.button("Cancel", key=K + "bulk_cancel", on_click=lambda: st.session_state.pop(_PENDING, None),
                  width="stretch")
