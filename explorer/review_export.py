"""The review page's export / import panel: decisions as CSV / JSON (with comments and bulk-action
ids), the cleaned-labels file, the excluded samples, and an import of an earlier export (parsed in memory; its file name is never a path)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from cache_format.atomic import atomic_write
from cache_format.runs import RunCache
from explorer.annotations import AnnotationError, AnnotationStore
from explorer.state import cache_dir
from explorer.text import md_code, md_escape

K = "review_"  # the review page's session-state prefix


def export_panel(run: RunCache, store: AnnotationStore, given: np.ndarray, run_name: str) -> None:
    """The review page's "Export / import decisions" expander (``given``: ``[n_train]`` labels)."""
    with st.expander("Export / import decisions"):
        c1, c2, c3, c4 = st.columns(4)
        c1.download_button("Decisions CSV", store.export_csv(), file_name=f"{run_name}.decisions.csv",
                           mime="text/csv", key=K + "dl_csv")
        c2.download_button("Decisions JSON", store.export_json(), file_name=f"{run_name}.decisions.json",
                           mime="application/json", key=K + "dl_json")
        cleaned = store.cleaned_labels(given).to_csv(index=False)
        c3.download_button("Cleaned labels CSV", cleaned, file_name=f"{run_name}.cleaned_labels.csv",
                           mime="text/csv", key=K + "dl_clean")
        excluded = store.excluded(run.n_train)
        c4.download_button(f"Excluded samples CSV ({len(excluded)})", store.excluded_csv(run.n_train),
                           file_name=f"{run_name}.excluded.csv", mime="text/csv", key=K + "dl_excluded",
                           help="the training indices marked 'exclude' (one 'index' column)")
        st.caption("Exports carry every decision with its comment and bulk-action id. The cleaned labels keep an "
                   "excluded sample's given label; `--exclude` with the excluded samples CSV drops those samples "
                   "(both files use this run's training indices).")
        target = cache_dir() / f"{run_name}.cleaned_labels.csv"
        dropped = cache_dir() / f"{run_name}.excluded.csv"
        if st.button("Save cleaned labels (and excluded samples) beside the cache", key=K + "save_clean"):
            try:
                store.write_cleaned_labels(target, given)
                wrote = [target]
                if len(excluded):
                    atomic_write(dropped, store.excluded_csv(run.n_train))
                    wrote.append(dropped)
                st.success("wrote " + ", ".join(md_code(p) for p in wrote))
            except OSError as exc:
                st.error(md_escape(f"{target.name}: cannot write ({exc.strerror or exc}); download the file instead"))
        st.code(f"influence-explorer precompute --config <run config> --name {run_name}-cleaned "
                f"--labels-override {target}" + (f" --exclude {dropped}" if len(excluded) else ""), language="bash")
        up = st.file_uploader("Import decisions (CSV or JSON export)", type=["csv", "json"], key=K + "upload")
        if up is not None and st.button("Import", key=K + "import"):
            _import(store, up.getvalue(), up.name, run.n_train, len(run.class_names))


def _import(store: AnnotationStore, data: bytes, name: str, n_train: int, n_classes: int) -> None:
    """Import an uploaded export, parsed in memory: its file name only picks CSV or JSON and is shown
    in messages; no path is ever built from it."""
    try:
        st.success(f"imported {store.import_bytes(data, name, n_train=n_train, n_classes=n_classes)} new rows")
    except AnnotationError as exc:
        st.error(md_escape(exc))
    except Exception as exc:  # noqa: BLE001 - sqlite3 errors (e.g. locked for longer than the timeout)
        st.error(md_escape(f"{name}: import stopped ({type(exc).__name__}: {exc}); rows already written are "
                           "kept, import the file again to add the rest"))

