"""Scale benchmark: the real CLI on synthetic CIFAR-shaped data with a 1.2M-parameter ResNet.

Generates 3x32x32 images of 10 classes (seeded class templates + noise, written as memory-mapped
``.npy`` files chunk by chunk: the n = 5k set is a prefix of the 50k one), trains the small ResNet of
``bench/bench_compression.py`` briefly and saves its checkpoint, then for each ``--sizes`` n runs

    python -m precompute.cli precompute --config <n>.toml   (bring-your-own model + npz folder)

in a fresh process with ``--memory-budget`` (default 3GB) and reports, per n: the process's peak RSS
(the largest of the manifest's per-stage peaks, which cover the whole run), the manifest's per-stage peak RSS and seconds, the gradient
stores' size and the score format (dense / top-k). Then the explorer's server-side cost of selecting a
test point on the largest cache (an AppTest run of the influence page per selection, median/max of 10).

    .venv/bin/python bench/bench_scale.py --sizes 5000,20000,50000 --n-test 10000 --methods graddot,trak,ekfac

Wall times depend on the machine's load; the throughput (samples/s per stage) is printed so that
larger runs can be extrapolated honestly (``--extrapolate 50000``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CHUNK = 2000


def make_data(folder: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """``X_train.npy [n, 3, 32, 32]`` float32 (+ y, test, class names), written in seeded chunks."""
    if (folder / "y_test.npy").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    low = rng.normal(size=(10, 3, 8, 8)).astype(np.float32)
    templates = np.repeat(np.repeat(low, 4, axis=2), 4, axis=3)  # smooth class patterns [10, 3, 32, 32]
    for split, n, off in (("train", n_train, 0), ("test", n_test, 10**7)):
        x = np.lib.format.open_memmap(folder / f"X_{split}.npy", "w+", np.float32, (n, 3, 32, 32))
        y = np.empty(n, np.int64)
        for s in range(0, n, CHUNK):
            e = min(n, s + CHUNK)
            r = np.random.default_rng([seed, off + s // CHUNK])
            y[s:e] = r.integers(0, 10, e - s)
            x[s:e] = 0.8 * templates[y[s:e]] + r.normal(size=(e - s, 3, 32, 32)).astype(np.float32)
        x.flush()
        del x
        np.save(folder / f"y_{split}.npy", y)
    np.save(folder / "class_names.npy", np.array([f"class {i}" for i in range(10)]))


def make_model(out: Path, data: Path, steps: int, threads: int) -> tuple[Path, Path]:
    """Write ``model.py`` (the ResNet) and a briefly trained ``resnet.pt``; returns both paths."""
    import torch
    from bench_compression import Block, SmallResNet

    src = out / "model.py"
    src.write_text("import torch\nfrom torch import nn\n\n\n" + inspect.getsource(Block) + "\n\n"
                   + inspect.getsource(SmallResNet) + "\n\ndef make_model():\n    return SmallResNet()\n")
    ckpt = out / "resnet.pt"
    if ckpt.exists():
        return src, ckpt
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SmallResNet()
    x = np.load(data / "X_train.npy", mmap_mode="r")
    y = np.load(data / "y_train.npy")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        idx = np.sort(gen.choice(min(len(y), 5000), 64, replace=False))
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(np.ascontiguousarray(x[idx]))),
                                                 torch.from_numpy(y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), ckpt)
    return src, ckpt


def write_config(path: Path, data: Path, model: Path, ckpt: Path, methods: list[str]) -> None:
    path.write_text(f"""name = "{path.stem}"

[data]
source = "npz"
path = "{data}"

[model]
factory = "{model}:make_model"
checkpoint = "{ckpt}"

[train]
weight_decay = 0.0005

[influence]
methods = {json.dumps(methods)}
damping = "auto"
topk = 50
train_batch_size = 128
test_batch_size = 512

[mislabels]
enabled = false
""")


def run_cli(cfg: Path, cache: Path, budget: str, threads: int, device: str = "auto") -> tuple[float, float, str]:
    """``(wall s, peak RSS MB, stderr tail)`` of one precompute in a fresh process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "precompute.cli", "precompute", "--config", str(cfg), "--cache-dir", str(cache),
           "--memory-budget", budget, "--device", device, "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"precompute failed for {cfg}:\n{out[-3000:]}")
    return wall, usage.ru_maxrss / 1024, out


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def select_latency(cache: Path, run: str, n_test: int, repeats: int = 10) -> tuple[float, float]:
    """Median and max ms, server side, of the influence page rendering a newly selected test point
    (streamlit AppTest: one full script run per selection, after a warm-up run)."""
    from streamlit.testing.v1 import AppTest

    from explorer import state

    os.environ[state.CACHE_ENV] = str(cache)
    at = AppTest.from_file(str(ROOT / "explorer" / "app.py"), default_timeout=120)
    at.query_params.update({"page": "influence", "run": run, "test": "0"})
    at.run()
    if at.exception:
        raise SystemExit(f"the influence page failed: {[e.value for e in at.exception]}")
    times = []
    for t in np.random.default_rng(0).integers(1, n_test, repeats):
        at.query_params["test"] = str(int(t))
        t0 = time.perf_counter()
        at.run()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/ie_scale"))
    ap.add_argument("--sizes", default="5000,20000,50000")
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--methods", default="graddot,trak,ekfac")
    ap.add_argument("--budget", default="3GB")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--extrapolate", type=int, default=50000, help="n_train to extrapolate the wall time to")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    rows, last = [], None
    for n in sizes:
        data = args.out / f"data-{n}"
        t0 = time.perf_counter()
        make_data(data, n, args.n_test)
        src, ckpt = make_model(args.out, args.out / f"data-{sizes[0]}", args.train_steps, args.threads)
        cfg = args.out / f"scale-{n}.toml"
        write_config(cfg, data, src, ckpt, methods)
        print(f"[n={n:,}] data ready in {time.perf_counter() - t0:.0f} s; running precompute ...", flush=True)
        wall, rss, log = run_cli(cfg, args.out / "cache", args.budget, args.threads, args.device)
        run = args.out / "cache" / cfg.stem
        man = json.loads((run / "manifest.json").read_text())
        # the pipeline resets the kernel's peak-RSS counter per stage (which also resets ru_maxrss),
        # so the run's peak is the largest per-stage peak it recorded
        rss = max([rss, *man.get("peak_rss_mb", {}).values()])
        rows.append((n, wall, rss, man, run))
        last = run
        print(f"[n={n:,}] {wall:.0f} s, peak RSS {rss:,.0f} MB", flush=True)
    print(f"\n## Scale: SmallResNet, {args.n_test:,} test points, budget {args.budget}, {args.threads} threads\n")
    print("| n_train | wall s | peak RSS MB (process) | " + " | ".join(f"{m} s" for m in methods)
          + " | store MB | scores | compression k |")
    print("|---|---:|---:|" + "---:|" * len(methods) + "---:|---|---|")
    for n, wall, rss, man, _run in rows:
        secs = [man["timings"].get(f"influence:{m}", float("nan")) for m in methods]
        store = sum(man["methods"][m].get("store", {}).get("bytes", 0) for m in methods) / 2**20
        fmt_ = "/".join(sorted({man["methods"][m].get("scores", "?") for m in methods}))
        comp = man["methods"][methods[0]].get("compression")
        k = comp.get("k") if isinstance(comp, dict) else comp
        print(f"| {n:,} | {wall:.0f} | {rss:,.0f} | " + " | ".join(f"{s:.0f}" for s in secs)
              + f" | {store:,.0f} | {fmt_} | {k} |")
    print("\nPer-stage peak RSS (MB) and seconds, largest run:")
    man = rows[-1][3]
    for stage, mb in man.get("peak_rss_mb", {}).items():
        print(f"  {stage:24s} {mb:8,.0f} MB  {man['timings'].get(stage, float('nan')):8.1f} s")
    if len(rows) >= 2:  # wall time is affine in n for a fixed test set: fit it on the two largest runs
        (n1, w1, *_), (n2, w2, *_) = rows[-2], rows[-1]
        slope = (w2 - w1) / (n2 - n1)
        est = w2 + slope * (args.extrapolate - n2)
        print(f"\nextrapolated wall time for n_train = {args.extrapolate:,}: {est / 60:.1f} min "
              f"({slope * 1000:.1f} s per 1k training samples, fitted on n = {n1:,} and {n2:,})")
    if last is not None:
        med, mx = select_latency(last.parent, last.name, args.n_test)
        print(f"explorer: selecting a test point, server side (AppTest run of the influence page, "
              f"n = {rows[-1][0]:,}): median {med:.0f} ms, max {mx:.0f} ms over 10")


if __name__ == "__main__":
    main()
