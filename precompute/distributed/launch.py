"""``influence-explorer precompute --launcher torchrun --nproc N``: the same command under torchrun.

It starts ``python -m torch.distributed.run --standalone --nproc-per-node N -m precompute.cli
precompute <the same arguments>`` (one machine, a free rendezvous port). For several machines,
call torchrun yourself with a rendezvous endpoint (docs/cluster.md).
"""

from __future__ import annotations

import os
import subprocess
import sys

from precompute.errors import ConfigError


def strip_launcher_args(argv: list[str]) -> list[str]:
    """``argv`` without ``--launcher X`` / ``--nproc N`` (either ``--flag value`` or ``--flag=value``)."""
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok in ("--launcher", "--nproc"):
            skip = True
            continue
        if tok.startswith(("--launcher=", "--nproc=")):
            continue
        out.append(tok)
    return out


def torchrun_command(argv: list[str], nproc: int) -> list[str]:
    """The torchrun command line that runs ``precompute <argv>`` in ``nproc`` processes."""
    if not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"--nproc must be an integer >= 1 (got {nproc!r})")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "precompute.cli", *strip_launcher_args(argv)]


def launch_torchrun(argv: list[str], nproc: int) -> int:
    """Run the command under torchrun and return its exit status (torchrun stops every rank when one fails)."""
    cmd = torchrun_command(argv, nproc)
    print("launching: " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    return subprocess.call(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
