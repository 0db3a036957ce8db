"""Explorer benchmark on a synthetic 50,000 train x 10,000 test run (2 GB float32 score matrix).

Writes the run with the real precompute writer (CacheWriter + ScoreWriter, row blocks), starts
``streamlit run explorer/app.py`` with server-side timing on, drives it with Debian chromium
(playwright), and prints a markdown table: app start to first render, server-side time of
selecting a test point (influence view and embedding map), the browser wall clock from a click on a
gallery card to its proponent images drawn (median / max of 10), and the Streamlit process's peak RSS.
Then a breakdown of the click: in-page time (pointerdown to drawn), the browser main thread's long
tasks, server time (page / whole script run), script runs, elements and bytes sent. With
``--baseline-rev REV`` the same clicks on git revision REV's explorer, alternating, under the same load.

    .venv/bin/python bench/bench_explorer.py [--n-train 50000 --n-test 10000 --dir /tmp/ie_bench --keep]
                                             [--baseline-rev HEAD] [--clicks 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from cache_format import names as fmt
from precompute.cache import CacheWriter, ScoreWriter

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
METHOD = "graddot"


def build(run_dir: Path, n_train: int, n_test: int, n_classes: int = 10, block: int = 500, topk: int = 50) -> float:
    """Write the synthetic run; scores = class-aligned low-rank structure + noise. Returns seconds."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    y_tr, y_te = rng.integers(0, n_classes, n_train), rng.integers(0, n_classes, n_test)
    centers = rng.normal(scale=6.0, size=(n_classes, 2)).astype(np.float32)
    emb = np.concatenate([centers[y_tr], centers[y_te]]) + rng.normal(size=(n_train + n_test, 2)).astype(np.float32)
    protos = rng.integers(0, 256, size=(n_classes, 8, 8))
    def images(y):
        return np.clip(protos[y] + rng.normal(scale=40, size=(len(y), 8, 8)), 0, 255).astype(np.uint8)
    def probs(y):
        logits = rng.normal(size=(len(y), n_classes)).astype(np.float32)
        logits[np.arange(len(y)), y] += 3.0
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)
    p_tr, p_te = probs(y_tr), probs(y_te)
    u = rng.normal(size=(n_test, 8)).astype(np.float32)
    v = rng.normal(size=(8, n_train)).astype(np.float32)
    with CacheWriter(run_dir) as w:
        sw = ScoreWriter(w, METHOD, n_test, n_train, topk)
        for s in range(0, n_test, block):
            e = min(n_test, s + block)
            b = (u[s:e] @ v) * 0.1 + rng.normal(scale=0.05, size=(e - s, n_train)).astype(np.float32)
            b += 0.3 * (y_te[s:e, None] == y_tr[None, :])
            sw.write_rows(s, b)
        sw.close(np.abs(rng.normal(size=n_train)).astype(np.float32))
        for name, arr in ((fmt.TRAIN_IMAGES, images(y_tr)), (fmt.TEST_IMAGES, images(y_te)), (fmt.TRAIN_PROBS, p_tr),
                          (fmt.TEST_PROBS, p_te), (fmt.EMBEDDING, emb),
                          (fmt.TRAIN_FEATURES, rng.normal(size=(n_train, 16)).astype(np.float32)),
                          (fmt.TEST_FEATURES, rng.normal(size=(n_test, 16)).astype(np.float32))):
            w.save_array(name, arr)
        frames = []
        for split, y, p in (("train", y_tr, p_tr), ("test", y_te, p_te)):
            pred = p.argmax(1)
            frames.append(pd.DataFrame({
                "split": split, "index": np.arange(len(y), dtype=np.int64), "label": y.astype(np.int64),
                "original_label": y.astype(np.int64), "flipped": np.zeros(len(y), bool), "pred": pred.astype(np.int64),
                "confidence": p.max(1).astype(np.float32), "loss": -np.log(p[np.arange(len(y)), y]).astype(np.float32),
                "correct": pred == y, "source_index": np.arange(len(y), dtype=np.int64)}))
        w.save_parquet(fmt.SAMPLES, pd.concat(frames, ignore_index=True))
        acc = float((p_te.argmax(1) == y_te).mean())
        w.finalize({"name": run_dir.name, "config": {"name": run_dir.name, "synthetic": True},
                    "dataset": {"name": "synthetic", "n_train": n_train, "n_test": n_test, "n_classes": n_classes,
                                "class_names": [str(c) for c in range(n_classes)], "image_shape": [8, 8]},
                    "model": {"arch": "synthetic", "test_accuracy": acc},
                    "methods": {METHOD: {"topk": topk}}})
    return time.perf_counter() - t0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vmhwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _settle(page, selector: str) -> None:
    page.wait_for_selector(selector, timeout=120_000)
    page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=120_000)


#: the gallery's cards: a page link now, a button in older trees (--baseline-rev)
CARD = "div[class*='st-key-iecard_pred'] a, div[class*='st-key-iecard_pred'] button"
#: in the page: the time of the last pointerdown, and the main thread's long tasks since
_INIT = """window.__ie = {click: 0, long: []};
document.addEventListener('pointerdown', () => { window.__ie = {click: performance.now(), long: []}; }, true);
new PerformanceObserver(l => { for (const e of l.getEntries()) window.__ie.long.push([e.startTime, e.duration]); })
  .observe({entryTypes: ['longtask']});"""
_PROPONENTS_VISIBLE = ("() => { const ok = Array.from(document.querySelectorAll(\"img[alt^='train #']\"))"
                       ".filter(i => i.complete && i.naturalWidth > 0).length >= 16;"
                       " if (ok && !window.__ie.drawn) window.__ie.drawn = performance.now(); return ok; }")


def _frames(page) -> list[tuple[str, int]]:
    """Record (ForwardMsg type, bytes) of every websocket message the page receives, in order."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    got: list[tuple[str, int]] = []

    def on_frame(payload) -> None:
        if isinstance(payload, bytes):
            m = ForwardMsg()
            m.ParseFromString(payload)
            got.append((m.WhichOneof("type") or "", len(payload)))
    page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
    return got


def _click(page, frames: list, i: int) -> dict[str, float]:
    """Click gallery card ``i``; wait for its proponent and opponent images drawn; back to the gallery.

    Returns the browser wall clock (playwright's click included), the in-page time from the
    pointerdown to the images drawn, the main thread's long tasks in between, and the script runs
    (new_session messages), elements (delta messages) and kilobytes the server sent for the click."""
    card = page.locator(CARD).nth(i)
    test = int(card.inner_text().split("#")[1])
    frames.clear()
    t0 = time.perf_counter()
    card.click()
    page.wait_for_selector(f"h1:has-text('Test #{test}:')", timeout=120_000)
    page.wait_for_function(_PROPONENTS_VISIBLE, timeout=120_000, polling="raf")
    wall = (time.perf_counter() - t0) * 1000
    ie = page.evaluate("() => window.__ie")
    _settle(page, f"h1:has-text('Test #{test}:')")
    busy = sum(min(s + d, ie["drawn"]) - max(s, ie["click"]) for s, d in ie["long"] if s < ie["drawn"])
    out = {"wall": wall, "in_page": ie["drawn"] - ie["click"], "busy": busy,
           "runs": sum(k == "new_session" for k, _ in frames), "deltas": sum(k == "delta" for k, _ in frames),
           "kb": sum(n for _, n in frames) / 1024}
    page.go_back()
    _settle(page, CARD)
    time.sleep(0.3)
    return out


def _click_to_proponents(pages: dict[str, tuple], n: int) -> dict[str, list[dict[str, float]]]:
    """``n`` gallery clicks on each tree's page (label -> (page, frames)), alternating, so that every
    tree sees the same machine load."""
    out: dict[str, list[dict[str, float]]] = {k: [] for k in pages}
    for i in range(n):
        for label, (page, frames) in pages.items():
            page.bring_to_front()
            out[label].append(_click(page, frames, i))
    return out


def _serve(tree: Path, cache_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``streamlit run`` of ``tree``'s explorer on a free port, with server-side timing to ``log``."""
    log.unlink(missing_ok=True)
    port = _port()
    env = {**os.environ, "INFLUENCE_EXPLORER_CACHE": str(cache_dir), "INFLUENCE_EXPLORER_TIMING": str(log),
           "PYTHONPATH": str(tree)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(tree / "explorer" / "app.py"),
                             "--server.headless", "true", "--server.port", str(port), "--browser.gatherUsageStats",
                             "false", "--server.fileWatcherType", "none"], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit of {tree} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"{base}/_stcore/health", timeout=1).close()
            return proc, base
        except OSError:
            time.sleep(0.1)


def _gallery(browser, base: str, run: str) -> tuple:
    """A page on ``base``'s gallery, warmed (the run opened, the influence view's scripts loaded)."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.add_init_script(_INIT)
    frames = _frames(page)
    page.goto(f"{base}/?run={run}&test=0")
    _settle(page, "img[alt^='train #']")
    page.goto(f"{base}/predictions?run={run}")
    _settle(page, CARD)
    return page, frames


def _click_server_ms(log: Path) -> list[tuple[float, float]]:
    """(page ms, whole script ms) of the influence runs after the gallery's first run (the clicks)."""
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    first = max(i for i, r in enumerate(rows) if r["page"] == "influence" and r["params"].get("test") == "0")
    return [(r["ms"], r.get("script_ms", float("nan"))) for r in rows[first + 1:] if r["page"] == "influence"]


def measure(cache_dir: Path, run: str, n_test: int, n_select: int = 10,
            baseline: Path | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    log = cache_dir / "timing.jsonl"
    t_start = time.perf_counter()
    proc, base = _serve(ROOT, cache_dir, log)
    out: dict = {"server_healthy_s": time.perf_counter() - t_start}
    base_proc = None
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(f"{base}/?run={run}&test=0")
            _settle(page, "img[alt^='train #']")
            out["first_render_s"] = time.perf_counter() - t_start
            rng = np.random.default_rng(1)
            for t in rng.integers(1, n_test, n_select):  # select test points through the page's own input
                box = page.get_by_label("Test point")
                box.fill(str(int(t)))
                box.press("Enter")
                _settle(page, f"h1:has-text('Test #{int(t)}:')")
            page.goto(f"{base}/embedding?run={run}&test=0&color=influence")
            _settle(page, "[data-testid=stPlotlyChart] .main-svg")
            for t in rng.integers(1, n_test, max(3, n_select // 2)):
                page.goto(f"{base}/embedding?run={run}&test={int(t)}&color=influence")
                _settle(page, "[data-testid=stPlotlyChart] .main-svg")
            page.close()
            galleries = {"this tree": _gallery(browser, base, run)}
            if baseline is not None:
                base_proc, base_url = _serve(baseline, cache_dir, cache_dir / "timing_baseline.jsonl")
                galleries["baseline"] = _gallery(browser, base_url, run)
            out["load_before"] = os.getloadavg()
            out["clicks"] = _click_to_proponents(galleries, n_select)
            out["load_after"] = os.getloadavg()
            browser.close()
        out["peak_rss_mb"] = _vmhwm_mb(proc.pid)
    finally:
        for pr in (proc, base_proc):
            if pr is not None:
                pr.terminate()
                pr.wait(timeout=20)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    infl = [r["ms"] for r in rows if r["page"] == "influence"][1:1 + n_select]  # first = cold open of the run
    emb = [r["ms"] for r in rows if r["page"] == "embedding"][1:]
    out["select_influence_ms_median"], out["select_influence_ms_max"] = statistics.median(infl), max(infl)
    out["select_embedding_ms_median"], out["select_embedding_ms_max"] = statistics.median(emb), max(emb)
    out["cold_influence_ms"] = [r["ms"] for r in rows if r["page"] == "influence"][0]
    out["predictions_ms"] = max(r["ms"] for r in rows if r["page"] == "predictions")
    out["click_server"] = {"this tree": _click_server_ms(log)}
    if baseline is not None:
        out["click_server"]["baseline"] = _click_server_ms(cache_dir / "timing_baseline.jsonl")
    return out


def _baseline_tree(rev: str, into: Path) -> Path:
    """The explorer of git revision ``rev`` (its explorer/, components/, cache_format/), extracted
    with ``git archive`` into ``into`` (git state untouched)."""
    into.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "explorer", "components", "cache_format"],
                         check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    return into


def _breakdown(clicks: list[dict[str, float]], server: list[tuple[float, float]]) -> str:
    """One table row: medians of a tree's clicks (wall also its max) and of its server times."""
    med = {k: statistics.median(c[k] for c in clicks) for k in clicks[0]}
    page_ms = statistics.median(s[0] for s in server) if server else float("nan")
    script_ms = statistics.median(s[1] for s in server) if server else float("nan")
    return (f"{med['wall']:.0f} / {max(c['wall'] for c in clicks):.0f} ms | {med['in_page']:.0f} ms | "
            f"{med['busy']:.0f} ms | {page_ms:.0f} / {script_ms:.0f} ms | {med['runs']:.0f} | {med['deltas']:.0f} | "
            f"{med['kb']:.0f} KB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/ie_bench"))
    ap.add_argument("--keep", action="store_true", help="keep the synthetic cache")
    ap.add_argument("--clicks", type=int, default=10, help="gallery clicks per tree (and test points selected)")
    ap.add_argument("--baseline-rev", default=None, metavar="REV",
                    help="also time the gallery click on git revision REV's explorer (e.g. HEAD), alternating")
    args = ap.parse_args()
    run_dir = args.dir / "bench"
    need = args.n_train * args.n_test * 4 * 1.1
    free = shutil.disk_usage(args.dir.parent if not args.dir.exists() else args.dir).free
    if free < need:
        print(f"need {need / 1e9:.1f} GB free under {args.dir}, have {free / 1e9:.1f}", file=sys.stderr)
        return 1
    try:
        build_s = build(run_dir, args.n_train, args.n_test) if not (run_dir / fmt.MANIFEST).exists() else float("nan")
        size = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
        baseline = _baseline_tree(args.baseline_rev, args.dir / "baseline_tree") if args.baseline_rev else None
        r = measure(args.dir, "bench", args.n_test, args.clicks, baseline)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    print(f"\nSynthetic run: {args.n_train:,} train x {args.n_test:,} test, {size / 1e9:.2f} GB on disk "
          f"(written in {build_s:.0f} s)\n")
    print("| measure | value | target |\n|---|---|---|")
    print(f"| app start to first render (influence view, incl. browser) | {r['first_render_s']:.1f} s | |")
    print(f"| server healthy after | {r['server_healthy_s']:.1f} s | |")
    print(f"| first influence render, cold (opens run, reads samples) | {r['cold_influence_ms']:.0f} ms | |")
    print(f"| select a test point: influence view, median / max | {r['select_influence_ms_median']:.0f} / "
          f"{r['select_influence_ms_max']:.0f} ms | < 150 ms |")
    print(f"| select a test point: embedding map coloured by influence, median / max | "
          f"{r['select_embedding_ms_median']:.0f} / {r['select_embedding_ms_max']:.0f} ms | |")
    print(f"| predictions page rerun (max) | {r['predictions_ms']:.0f} ms | |")
    wall = [c["wall"] for c in r["clicks"]["this tree"]]
    print(f"| click a gallery card to visible proponents (browser), median / max of {len(wall)} | "
          f"{statistics.median(wall):.0f} / {max(wall):.0f} ms | < 300 ms median (idle machine) |")
    print(f"| peak RSS of the Streamlit process (VmHWM) | {r['peak_rss_mb']:.0f} MB | < 1024 MB |")
    print(f"\nGallery click breakdown (medians of {len(wall)}; load average 1/5/15 min "
          f"{'/'.join(f'{x:.2f}' for x in r['load_before'])} before the clicks, "
          f"{'/'.join(f'{x:.2f}' for x in r['load_after'])} after):\n")
    print("| tree | wall median / max | in page: pointerdown to drawn | main-thread long tasks | "
          "server: page / whole script | script runs | elements sent | bytes sent |\n|---|---|---|---|---|---|---|---|")
    for label, clicks in r["clicks"].items():
        name = f"baseline ({args.baseline_rev})" if label == "baseline" else label
        print(f"| {name} | {_breakdown(clicks, r['click_server'][label])} |")
    if "baseline" in r["clicks"]:
        ratio = statistics.median(c["wall"] for c in r["clicks"]["baseline"]) / statistics.median(wall)
        print(f"\nbaseline / this tree, median wall clock: {ratio:.2f}x (same run, alternating clicks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
