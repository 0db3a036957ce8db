"""Damaged and hostile variants of a good run, for testing every reader of a cache against them.

``make_hostile_caches(good_run, out_dir)`` copies a built run (e.g. the session's ``digits_run``)
into ``out_dir/<variant>/<variant>/`` (one cache folder per variant, the run named after it) and
damages each copy in one way: truncated or missing files, wrong shapes, NaN scores, ids out of
range, a short class list, a manifest without ``dataset``, method names or checkpoint paths that
point outside the run, a symlink out of the run, pickled arrays, and markdown/HTML in every string
a page shows. :data:`VARIANTS` says, per variant, which file a reader must name (``None``: the
run is readable and must render safely).

The app (tests/test_hardening_damaged.py) and the reader use it; so can ``evaluate``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

HOST = "http://host.invalid"
#: strings that would be markup if shown unescaped (class names of the "markdown" variant)
MARKDOWN_LABELS = [f"![x]({HOST}/x.png)", f"<img src={HOST}/y.png>", "**bold**", f"[link]({HOST}/)", ":red[red]",
                   "$x^2$", "`tick", "<script>alert(1)</script>", f"a\n\n![z]({HOST}/z.png)", "<b>nine</b>"]
MARKDOWN_DATASET = f"![d]({HOST}/d.png) <b>data</b>"
MARKDOWN_PATH = f"img/![p]({HOST}/p.png)<img src=x>.png"
MARKDOWN_METHOD = f"![m]({HOST}/m.png)"


@dataclass(frozen=True)
class Variant:
    """One way of damaging a run: ``make(run_dir)`` damages a copy; ``names`` is the file (relative
    to the run) a reader's message must name, ``None`` when the run must open and render safely."""

    name: str
    what: str
    make: Callable[[Path], None]
    names: str | None


# --- helpers --------------------------------------------------------------------------------------
def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _write_manifest(run: Path, m: dict) -> None:
    (run / "manifest.json").write_text(json.dumps(m, indent=1))


def _edit(run: Path, fn: Callable[[dict], None]) -> None:
    m = _manifest(run)
    fn(m)
    _write_manifest(run, m)


def _array(run: Path, rel: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    path = run / rel
    a = fn(np.array(np.load(path, allow_pickle=False)))
    path.unlink()
    np.save(path, a)


def _truncate(run: Path, rel: str, keep: float = 0.5) -> None:
    path = run / rel
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _set(a: np.ndarray, index: tuple, value) -> np.ndarray:
    a[index] = value
    return a


def _relist(run: Path, rel: str) -> None:
    """Make the manifest's ``arrays`` entry of ``rel`` agree with the file (a consistent lie)."""
    a = np.load(run / rel, mmap_mode="r")
    _edit(run, lambda m: m["arrays"].__setitem__(rel, {"shape": list(a.shape), "dtype": str(a.dtype)}))


def _markdown(run: Path) -> None:
    """Markup in every string a page shows: class names, dataset and model names, sample paths,
    a mislabel ranking method name."""
    m = _manifest(run)
    n = len(m["dataset"]["class_names"])
    m["dataset"]["class_names"] = (MARKDOWN_LABELS * n)[:n]
    m["dataset"]["name"] = MARKDOWN_DATASET
    m["dataset"]["source_path"] = f"/data/![r]({HOST}/r.png)"
    m["model"]["arch"] = f"<img src={HOST}/a.png>"
    mis = m.get("mislabels")
    if mis and "loss" in mis.get("methods", []):
        mis["methods"] = [MARKDOWN_METHOD if x == "loss" else x for x in mis["methods"]]
        if mis.get("default_method") == "loss":
            mis["default_method"] = MARKDOWN_METHOD
        if "loss" in (mis.get("detection") or {}):
            mis["detection"][MARKDOWN_METHOD] = mis["detection"].pop("loss")
        scores = run / "mislabels" / "scores.parquet"
        pd.read_parquet(scores).rename(columns={"loss": MARKDOWN_METHOD}).to_parquet(scores)
    _write_manifest(run, m)
    samples = pd.read_parquet(run / "samples.parquet")
    samples["path"] = MARKDOWN_PATH
    samples.to_parquet(run / "samples.parquet")
    m = _manifest(run)
    m["arrays"].pop("samples.parquet", None)
    _write_manifest(run, m)


def _symlink_out(run: Path) -> None:
    rel = "methods/exact/scores.npy"
    outside = run.parent / "outside_scores.npy"
    shutil.copyfile(run / rel, outside)
    (run / rel).unlink()
    (run / rel).symlink_to(outside)


def _pickled(run: Path) -> None:
    path = run / "arrays" / "test_probs.npy"
    n = np.load(path, mmap_mode="r").shape[0]
    path.unlink()
    np.save(path, np.array([{"payload": i} for i in range(n)], dtype=object), allow_pickle=True)


def _huge_header(run: Path) -> None:
    """A header that claims 10^12 rows over a small file (must be refused without allocating)."""
    path = run / "methods" / "exact" / "scores.npy"
    data = path.read_bytes()
    n_test = int(np.load(path, mmap_mode="r").shape[0])
    end = data.index(b"\n")  # the header (padded with spaces) ends at the first newline
    old, new = f"({n_test},".encode(), b"(1000000000000,"
    header = data[:end].replace(old, new, 1)
    header = header[: end - len(header)] if len(header) > end else header  # eat padding: same length
    path.write_bytes(header + data[end:])


def _labels(run: Path) -> None:
    s = pd.read_parquet(run / "samples.parquet")
    s.loc[s.index[3], "label"] = 99
    s.to_parquet(run / "samples.parquet")


def _rename_method(new: str) -> Callable[[Path], None]:
    def make(run: Path) -> None:
        _edit(run, lambda m: m.__setitem__("methods", {(new if k == "exact" else k): v for k, v in m["methods"].items()}))
    return make


def _checkpoints(path: str) -> Callable[[Path], None]:
    def make(run: Path) -> None:
        _edit(run, lambda m: [c.__setitem__("path", path) for c in m["model"]["checkpoints"]])
    return make


S, P = "samples.parquet", "methods/exact"
VARIANTS: list[Variant] = [
    Variant("truncated-scores", "scores.npy cut in half", lambda r: _truncate(r, f"{P}/scores.npy"), f"{P}/scores.npy"),
    Variant("truncated-images", "train_images.npy cut short", lambda r: _truncate(r, "arrays/train_images.npy", 0.9),
            "arrays/train_images.npy"),
    Variant("empty-topk", "a zero-byte top-k file", lambda r: _truncate(r, f"{P}/top_proponents.npy", 0),
            f"{P}/top_proponents.npy"),
    Variant("huge-header", "a header claiming 10^12 rows", _huge_header, f"{P}/scores.npy"),
    Variant("missing-array", "a method's top-k file deleted",
            lambda r: (r / "methods/graddot/top_opponents.npy").unlink(), "methods/graddot/top_opponents.npy"),
    Variant("missing-samples", "samples.parquet deleted", lambda r: (r / S).unlink(), S),
    Variant("truncated-samples", "samples.parquet cut in half", lambda r: _truncate(r, S), S),
    Variant("wrong-shape", "test_probs with a column short (manifest unchanged)",
            lambda r: _array(r, "arrays/test_probs.npy", lambda a: a[:, :-1].copy()), "arrays/test_probs.npy"),
    Variant("wrong-shape-listed", "top-k with a row short, manifest agreeing",
            lambda r: (_array(r, f"{P}/top_proponents.npy", lambda a: a[:-1].copy()), _relist(r, f"{P}/top_proponents.npy")),
            f"{P}/top_proponents.npy"),
    Variant("wrong-dtype", "ids stored as floats",
            lambda r: _array(r, f"{P}/top_opponents.npy", lambda a: a.astype(np.float32)), f"{P}/top_opponents.npy"),
    Variant("nan-topk-scores", "NaN in the top-k scores",
            lambda r: _array(r, f"{P}/top_proponent_scores.npy", lambda a: _set(a, (42, 0), np.nan)),
            f"{P}/top_proponent_scores.npy"),
    Variant("nan-scores", "NaN in a row of the score matrix",
            lambda r: _array(r, f"{P}/scores.npy", lambda a: _set(a, (0, 5), np.nan)), f"{P}/scores.npy"),
    Variant("inf-self-influence", "inf in self-influence",
            lambda r: _array(r, f"{P}/self_influence.npy", lambda a: _set(a, (7,), np.inf)), f"{P}/self_influence.npy"),
    Variant("ids-out-of-range", "a top-k id >= n_train",
            lambda r: _array(r, f"{P}/top_proponents.npy", lambda a: _set(a, (42, 0), 10**6)), f"{P}/top_proponents.npy"),
    Variant("negative-ids", "a top-k id of -1",
            lambda r: _array(r, f"{P}/top_opponents.npy", lambda a: _set(a, (0, 0), -1)), f"{P}/top_opponents.npy"),
    Variant("helped-out-of-range", "a reverse top-k id >= n_test",
            lambda r: _array(r, f"{P}/train_top_helped.npy", lambda a: _set(a, (7, 0), 10**6)),
            f"{P}/train_top_helped.npy"),
    Variant("mislabel-ids-out-of-range", "a mislabel proponent id >= n_train",
            lambda r: _array(r, "mislabels/proponents.npy", lambda a: _set(a, (0, 0), 10**6)), "mislabels/proponents.npy"),
    Variant("short-class-list", "five class names for ten classes",
            lambda r: _edit(r, lambda m: m["dataset"].__setitem__("class_names", m["dataset"]["class_names"][:5])),
            "manifest.json"),
    Variant("short-class-list-consistent", "five class names and n_classes = 5, labels up to 9",
            lambda r: _edit(r, lambda m: m["dataset"].update(class_names=m["dataset"]["class_names"][:5], n_classes=5)),
            S),
    Variant("labels-out-of-range", "a sample labelled 99", _labels, S),
    Variant("no-dataset", "a manifest without 'dataset'", lambda r: _edit(r, lambda m: m.pop("dataset")), "manifest.json"),
    Variant("method-traversal", "method named '../x' in the manifest", _rename_method("../x"), "manifest.json"),
    Variant("method-absolute", "method named '/etc' in the manifest", _rename_method("/etc"), "manifest.json"),
    Variant("array-traversal", "manifest 'arrays' lists '../outside.npy'",
            lambda r: _edit(r, lambda m: m["arrays"].__setitem__("../outside.npy", {"shape": [1], "dtype": "float32"})),
            "manifest.json"),
    Variant("checkpoint-absolute", "checkpoint paths '/etc/passwd'", _checkpoints("/etc/passwd"), "manifest.json"),
    Variant("checkpoint-traversal", "checkpoint paths '../../x.pt'", _checkpoints("../../x.pt"), "manifest.json"),
    Variant("symlink-out", "scores.npy a symlink to a file outside the run", _symlink_out, f"{P}/scores.npy"),
    Variant("pickled-array", "an object (pickle) array", _pickled, "arrays/test_probs.npy"),
    Variant("manifest-garbage", "manifest.json not JSON",
            lambda r: (r / "manifest.json").write_text("{not json"), "manifest.json"),
    Variant("markdown", "markdown and HTML in class, dataset, model, method names and sample paths", _markdown, None),
]
BY_NAME = {v.name: v for v in VARIANTS}


def make_hostile_caches(good_run: Path, out_dir: Path, only: Iterable[str] | None = None) -> dict[str, Path]:
    """Write every variant of :data:`VARIANTS` (or those named in ``only``); returns ``{variant: run
    folder}``. The run folder is ``out_dir/<variant>/<variant>`` (its own cache folder, the run named
    after the variant; the copy leaves out ``evaluation/``)."""
    out: dict[str, Path] = {}
    for v in VARIANTS if only is None else [BY_NAME[n] for n in only]:
        run = Path(out_dir) / v.name / v.name
        shutil.copytree(good_run, run, ignore=shutil.ignore_patterns("evaluation"), symlinks=True)
        _edit(run, lambda m, name=v.name: m.__setitem__("name", name))
        v.make(run)
        out[v.name] = run
    return out
