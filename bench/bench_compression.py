"""Compressed per-sample gradient throughput vs plain batched training fwd+bwd, same model, same run.

Usage: ``.venv/bin/python bench/bench_compression.py [--kinds factored,dropout] [--dim 4096]
[--batch 64] [--threads 2] [--repeats 5] [--bn]``

The model is a small ResNet defined here (stem + 4 residual stages of one basic block each, widths
32/64/128/256, ~1.2M parameters, optional BatchNorm in eval mode), on synthetic 3x32x32 data with
10 classes, float32. "train" is one batched ``loss.mean().backward()`` (weight gradients summed over
the batch); "compress" is ``GradientCompressor.compress`` (``[b, k]`` per-sample rows). Each timing is
the best of ``--repeats`` rounds after a warm-up round, the entries interleaved
within each round so that changing machine load affects them alike. Target (issue 12): ratio >= 0.3x.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precompute.compression import CompressionConfig, GradientCompressor  # noqa: E402
from precompute.params import ParamSpace, select_parameters  # noqa: E402


class Block(nn.Module):
    """Basic residual block: conv3x3 (stride) -> [BN] -> ReLU -> conv3x3 -> [BN], plus a 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, bn: bool):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not bn)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=not bn)
        self.bn2 = norm(c_out)
        self.short = (nn.Conv2d(c_in, c_out, 1, stride=stride, bias=not bn)
                      if stride != 1 or c_in != c_out else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(h)) + self.short(x))


class SmallResNet(nn.Module):
    """``[b, 3, 32, 32] -> [b, 10]``: stem conv 3->32, stages 32, 64, 128, 256 (strides 1, 2, 2, 2)."""

    def __init__(self, width: int = 32, bn: bool = True, n_classes: int = 10):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=not bn)
        self.stem_bn = nn.BatchNorm2d(width) if bn else nn.Identity()
        blocks, c = [], width
        for i, w in enumerate(widths):
            blocks.append(Block(c, w, 1 if i == 0 else 2, bn))
            c = w
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(torch.relu(self.stem_bn(self.stem(x))))
        return self.head(h.mean(dim=(2, 3)))


def best_times(fns: dict[str, object], repeats: int) -> dict[str, float]:
    """Best wall time of each callable over ``repeats`` rounds, interleaved (a warm-up round first), so
    that a change in machine load hits every entry alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="factored,dropout")
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bn", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SmallResNet(bn=args.bn).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    space = ParamSpace(model, select_parameters(model))
    print(f"SmallResNet (BatchNorm {'eval' if args.bn else 'off'}): p = {space.size:,}, batch {args.batch}, "
          f"{args.threads} threads, dim {args.dim}")

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()

    fns: dict[str, object] = {"train": train_step}
    info: dict[str, tuple[int, str]] = {}
    for kind in args.kinds.split(","):
        comp = GradientCompressor.create(CompressionConfig(kind=kind, dim=args.dim), model, space, x[:2])
        paths: dict[str, int] = {}
        for g in comp.layout():
            paths[g["path"]] = paths.get(g["path"], 0) + 1
        out = torch.empty(args.batch, comp.dim)
        fns[kind] = lambda c=comp, o=out: c.compress(model, x, y, out=o)
        info[kind] = (comp.dim, ", ".join(f"{k} {v}" for k, v in sorted(paths.items())))
    best = best_times(fns, args.repeats)
    model.zero_grad(set_to_none=True)
    t_train = best.pop("train")
    print(f"| what | k | paths | s/batch | samples/s | ratio to train |\n|---|---|---|---|---|---|\n"
          f"| train fwd+bwd | - | - | {t_train:.3f} | {args.batch / t_train:.0f} | 1.00x |")
    for kind, t in best.items():
        k, desc = info[kind]
        print(f"| compress {kind} | {k} | {desc} | {t:.3f} | {args.batch / t:.0f} | {t_train / t:.2f}x |")

if __name__ == "__main__":
    main()
