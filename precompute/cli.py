"""``influence-explorer``: precompute a cache, or open the explorer on one.

Every expected failure (bad config, bad data, unwritable folder, conflicting run) prints one line
``error: ...`` naming the file/field and the fix, and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from precompute.errors import InfluenceExplorerError

DEFAULT_CACHE_DIR = os.environ.get("INFLUENCE_EXPLORER_CACHE", "cache")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _params(value: str):
    return value if value in ("all", "last_layer") else _csv(value)


def _damping(value: str):
    """A number, ``auto``, or ``from-eval[:RUN]`` (the best value recorded by ``evaluate``)."""
    if value in ("auto", "from-eval") or value.startswith("from-eval:"):
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, 'auto' or 'from-eval[:RUN]' (got {value!r})") from None


def _pairs(value: str) -> list[list[int]]:
    """``1:7,3:8`` -> ``[[1, 7], [3, 8]]``."""
    try:
        pairs = [[int(v) for v in p.split(":")] for p in _csv(value)]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected class pairs like 1:7,3:8 (got {value!r})")
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="influence-explorer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("precompute", help="train/load a model and write an influence cache")
    src = pre.add_mutually_exclusive_group()
    src.add_argument("--config", help="run config (TOML); flags below override its values")
    src.add_argument("--sample", help="a bundled sample config: digits, digits-noisy")
    pre.add_argument("--name", help="run name (folder under --cache-dir)")
    pre.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                     help="folder holding runs (default: $INFLUENCE_EXPLORER_CACHE or ./cache)")
    pre.add_argument("--out", help="exact run folder to write (overrides --cache-dir/--name)")
    pre.add_argument("--methods", type=_csv, help="comma-separated influence methods, e.g. exact,graddot,tracin "
                     "(`influence-explorer methods` lists them)")
    pre.add_argument("--model", dest="arch", choices=["logreg", "mlp", "cnn"], help="built-in architecture")
    pre.add_argument("--epochs", type=int)
    pre.add_argument("--lr", type=float)
    pre.add_argument("--optimizer", choices=["adam", "sgd", "lbfgs"])
    pre.add_argument("--weight-decay", type=float)
    pre.add_argument("--seed", type=int, help="training seed")
    pre.add_argument("--damping", type=_damping, help="lambda in (H + lambda I): a number, 'auto', or 'from-eval' "
                     "(the best value found by `evaluate` on this run; 'from-eval:RUN' for another run)")
    pre.add_argument("--params", type=_params, help="'all', 'last_layer' or comma-separated parameter prefixes")
    pre.add_argument("--topk", type=int, help="top-k proponents/opponents stored per test point")
    pre.add_argument("--label-noise", type=float, help="fraction of training labels to flip (e.g. 0.1)")
    pre.add_argument("--noise-seed", type=int, help="seed for the label flips")
    pre.add_argument("--noise-kind", choices=["symmetric", "pairs", "class-conditional"],
                     help="symmetric: to a random other class; pairs: within confusable class pairs; "
                     "class-conditional: by a transition matrix (docs/mislabels.md)")
    pre.add_argument("--noise-pairs", type=_pairs, metavar="A:B,...", help="class pairs for --noise-kind pairs, "
                     "e.g. 1:7,3:8 (default: the most confused pairs of a nearest-centroid classifier)")
    pre.add_argument("--noise-matrix", metavar="FILE.npy", help="[C, C] matrix for --noise-kind class-conditional: "
                     "row i weights where flipped labels of class i go (default: a nearest-centroid confusion matrix)")
    pre.add_argument("--labels-override", metavar="FILE",
                     help="CSV index,label of training labels to use (e.g. cleaned labels exported by the review page)")
    pre.add_argument("--exclude", metavar="FILE",
                     help="CSV with an 'index' column of training samples to drop (the review page's excluded samples; "
                          "same indices as --labels-override)")
    pre.add_argument("--no-mislabels", dest="mislabels", action="store_false", default=None,
                     help="skip the suspected-mislabel rankings")
    pre.add_argument("--mislabel-folds", type=int, help="k-fold retrains for cleanlab's out-of-fold probabilities "
                     "(0 = skip cleanlab; default 5)")
    pre.add_argument("--mislabel-detector", choices=["isolation_forest", "lof"],
                     help="outlier detector for Outlier Gradient Analysis")
    pre.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto = GPU if present")
    pre.add_argument("--memory-budget", help="memory for batches and store chunks, e.g. 4GB (default: a quarter of "
                     "the machine's memory, at most 8GB)")
    pre.add_argument("--chunk-rows", type=int, help="rows per gradient-store chunk (default: from the memory budget)")
    pre.add_argument("--compression", choices=["auto", "none", "factored", "dropout"],
                     help="gradient compression for graddot/gradcos/tracin (auto: only when the exact gradients "
                     "would not fit the memory budget)")
    pre.add_argument("--store-scores", choices=["auto", "dense", "topk"],
                     help="keep the full score matrix (dense), only the top-k (topk), or dense below a size (auto)")
    pre.add_argument("--overwrite", action="store_true", help="replace an existing run made with another config")
    pre.add_argument("--no-progress", action="store_true", help="no progress bars")
    pre.add_argument("--launcher", choices=["none", "torchrun"], default="none",
                     help="torchrun: run this precompute in --nproc processes on this machine (torch.distributed; "
                          "gloo on CPU, nccl on GPUs); for several machines call torchrun yourself (docs/cluster.md)")
    pre.add_argument("--nproc", type=int, default=2, help="processes for --launcher torchrun (one per GPU)")

    from precompute.evaluation.cli import add_evaluate_parser

    add_evaluate_parser(sub, DEFAULT_CACHE_DIR)

    sub.add_parser("methods", help="list the registered influence methods and what each needs and supports")

    app = sub.add_parser("app", help="open the explorer (Streamlit) on a cache folder")
    app.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    app.add_argument("--port", type=int, default=8501)
    app.add_argument("--headless", action="store_true", help="do not open a browser")
    app.add_argument("--address", default="127.0.0.1",
                     help="interface to listen on (default 127.0.0.1: this machine only). The app has no "
                          "authentication: to serve a team, put an authenticating reverse proxy in front "
                          "or use an SSH tunnel; --address 0.0.0.0 serves every network interface")
    return parser


def _load_run_config(args: argparse.Namespace):
    from precompute.config import RunConfig, apply_overrides, load_config

    if args.config:
        cfg = load_config(args.config)
    else:
        from sample_data import sample_config_path, sample_names

        name = args.sample or "digits"
        if name not in sample_names():
            from precompute.errors import ConfigError

            raise ConfigError(f"--sample: unknown sample {name!r}; bundled samples: {sample_names()}")
        cfg = load_config(sample_config_path(name))
    cfg = apply_overrides(cfg, {
        "name": args.name, "influence.methods": args.methods, "model.arch": args.arch, "train.epochs": args.epochs,
        "train.lr": args.lr, "train.optimizer": args.optimizer, "train.weight_decay": args.weight_decay,
        "train.seed": args.seed, "influence.damping": args.damping, "influence.params": args.params,
        "influence.topk": args.topk, "data.label_noise": args.label_noise, "data.noise_seed": args.noise_seed,
        "data.noise_kind": args.noise_kind, "data.noise_pairs": args.noise_pairs, "data.noise_matrix": args.noise_matrix,
        "data.labels_override": args.labels_override, "data.exclude": args.exclude, "mislabels.enabled": args.mislabels,
        "mislabels.folds": args.mislabel_folds, "mislabels.detector": args.mislabel_detector,
        "device": args.device, "memory_budget": args.memory_budget, "chunk_rows": args.chunk_rows,
        "influence.store_scores": args.store_scores,
    })
    if args.compression is not None:
        cfg.influence.compression = {**cfg.influence.compression, "kind": args.compression}
    assert isinstance(cfg, RunConfig)
    if isinstance(cfg.influence.damping, str) and cfg.influence.damping.startswith("from-eval"):
        from precompute.influence.from_eval import apply_damping_from_eval

        chosen = apply_damping_from_eval(cfg, args.cache_dir, args.out)
        print("damping from evaluation: " + ", ".join(f"{m}={v}" for m, v in chosen.items()), file=sys.stderr)
    cfg.validate()
    from precompute.influence.registry import check_influence_config

    check_influence_config(cfg.influence)
    return cfg


def cmd_precompute(args: argparse.Namespace) -> int:
    if args.launcher == "torchrun":
        from precompute.distributed.launch import launch_torchrun

        return launch_torchrun(args.argv, args.nproc)
    from precompute.embedding_worker import BackgroundEmbedding

    # the map's helper process starts first: its umap import overlaps ours (torch, pandas) and training
    background = BackgroundEmbedding() if os.environ.get("RANK", "0") == "0" else None
    try:
        from precompute.distributed.context import current, shutdown
        from precompute.pipeline import run_precompute

        cfg = _load_run_config(args)
        try:
            result = run_precompute(cfg, cache_dir=args.cache_dir, run_dir=args.out, overwrite=args.overwrite,
                                    progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr),
                                    background_embedding=background or False)
            if not current().is_main:
                return 0
        finally:
            shutdown()
    finally:
        if background is not None:
            background.close()
    if result.skipped:
        print(f"cache: {result.path} (up to date)")
        return 0
    m = result.manifest
    print(f"\ncache written: {result.path}")
    print(f"  model {m['model']['arch']}: train acc {m['model']['train_accuracy']:.3f}, "
          f"test acc {m['model']['test_accuracy']:.3f}")
    print(f"  {m['dataset']['n_test']} test x {m['dataset']['n_train']} train, methods: {', '.join(m['methods'])}")
    if m["dataset"].get("skipped_corrupt"):
        print(f"  skipped {m['dataset']['skipped_corrupt']} unreadable image(s) (data.on_corrupt = \"skip\"; "
              "listed in manifest.json: dataset.skipped_corrupt_files)")
    print("  stage timings:")
    for stage, secs in result.timings.items():
        print(f"    {stage:<22} {secs:8.2f} s")
    print(f"  peak memory (RSS): {result.peak_rss_mb:.0f} MB")
    print(f"open it with: influence-explorer app --cache-dir {shlex.quote(str(Path(result.path).parent))}")
    return 0


def cmd_methods(_args: argparse.Namespace) -> int:
    """Print every registered method: name, damping scale, checkpoints, per-layer, summary."""
    from precompute.influence.registry import registered

    methods = registered()
    width = max(len(m) for m in methods)
    print(f"{'method':<{width}}  {'damping':<11}  {'checkpoints':<11}  {'per-layer':<9}  summary")
    for name, cls in methods.items():
        c = cls.capabilities
        print(f"{name:<{width}}  {c.damping or '-':<11}  {'needed' if c.needs_checkpoints else '-':<11}  "
              f"{'yes' if c.per_layer else '-':<9}  {cls.summary}")
    return 0


def _is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


#: Streamlit settings of every ``influence-explorer app``: no tracebacks (server paths) in the browser,
#: no usage statistics, small uploads (a decisions export is kilobytes to a few megabytes)
APP_FLAGS = ("--browser.gatherUsageStats", "false", "--client.showErrorDetails", "none",
             "--client.toolbarMode", "viewer", "--server.maxUploadSize", "32")


def cmd_app(args: argparse.Namespace) -> int:
    from streamlit.web import cli as st_cli

    app_path = Path(__file__).resolve().parent.parent / "explorer" / "app.py"
    os.environ["INFLUENCE_EXPLORER_CACHE"] = str(Path(args.cache_dir).resolve())
    if not _is_loopback(args.address):
        print(f"warning: the explorer has no authentication: anyone who can reach {args.address}:{args.port} "
              "can read every run in the cache folder and write review decisions; serve a team through an "
              "authenticating reverse proxy or an SSH tunnel instead", file=sys.stderr, flush=True)
    sys.argv = ["streamlit", "run", str(app_path), "--server.port", str(args.port),
                "--server.address", args.address, *APP_FLAGS]
    if args.headless:
        sys.argv += ["--server.headless", "true"]
    return st_cli.main()


def _on_sigterm(_signum, _frame) -> None:
    from precompute.errors import Terminated

    raise Terminated()


def _rank_tag() -> str:
    """``"[rank 1/2] "`` inside a torchrun launch (every rank reports its own error), else ``""``."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    return f"[rank {rank}/{world}] " if rank and world and world != "1" else ""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.command in ("precompute", "evaluate"):  # unwind like Ctrl-C: partial folders are removed
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command == "precompute":
            return cmd_precompute(args)
        if args.command == "evaluate":
            from precompute.evaluation.cli import cmd_evaluate

            return cmd_evaluate(args)
        if args.command == "methods":
            return cmd_methods(args)
        return cmd_app(args)
    except InfluenceExplorerError as exc:
        print(f"{_rank_tag()}error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        from precompute.errors import Terminated

        if isinstance(exc, Terminated):
            print(f"error: terminated (SIGTERM); no {'run' if args.command == 'precompute' else 'result'} was "
                  "written (completed gradient-store chunks are kept: rerun to resume)", file=sys.stderr)
            return 143
        print("error: interrupted; no run was written (completed gradient-store chunks are kept: rerun to resume)",
              file=sys.stderr)
        return 130


def run() -> None:
    """The console entry point: :func:`main`, then exit without the interpreter's teardown.

    After torch, scikit-learn, umap and numba are loaded, finalising their modules takes 1.4-1.8 s of a
    digits run (measured: last ``atexit`` handler to process exit); everything the command wrote is
    closed by then (the cache is renamed into place, the numba cache written at compile time), so only
    the standard streams are flushed. ``main()`` itself returns normally (tests call it in-process).
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else int(bool(code)))


if __name__ == "__main__":
    run()
