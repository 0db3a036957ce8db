"""``--damping from-eval[:RUN]``: each damped method gets the best lambda of its own damping sweep.

The sweep (``influence-explorer evaluate``) records, per method, the lambda with the best LDS. A
method's lambda only makes sense on the matrix it is added to (its ``capabilities.damping`` scale), so
a method never inherits another scale's value: the run-level ``influence.damping`` becomes the best
value of the highest-LDS method on the Hessian scale, and a damped method with no recorded sweep on
another scale (e.g. TRAK's kernel) falls back to its own ``"auto"`` rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cache_format.evaluation import recorded_best_damping
from cache_format.names import MANIFEST
from precompute.config import RunConfig
from precompute.errors import ConfigError
from precompute.influence.registry import registered


def apply_damping_from_eval(cfg: RunConfig, cache_dir: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Resolve ``cfg.influence.damping = "from-eval[:RUN]"`` in place; returns ``{method: lambda}`` chosen.

    The source run is ``RUN`` (a name under ``cache_dir`` or a run folder) or else the run being built
    (``out`` or ``cache_dir/name``).
    """
    source = str(cfg.influence.damping).partition(":")[2]
    if source:
        run_dir = Path(source) if (Path(source) / MANIFEST).is_file() else Path(cache_dir) / source
    else:
        run_dir = Path(out) if out else Path(cache_dir) / cfg.name
    best = recorded_best_damping(run_dir)
    if not best:
        raise ConfigError(f"influence.damping: 'from-eval' found no damping sensitivity in {run_dir}/evaluation/"
                          f"results.json; run `influence-explorer evaluate {run_dir.name}` first, name the evaluated "
                          "run with --damping from-eval:RUN, or pass a number")
    classes = registered()

    def scale(m: str) -> str | None:
        return classes[m].capabilities.damping if m in classes else None

    on_hessian = {m: v for m, v in best.items() if scale(m) == "hessian"}
    if on_hessian:
        top = max(on_hessian, key=lambda m: on_hessian[m]["best_lds"] if on_hessian[m]["best_lds"] is not None
                  else float("-inf"))
        cfg.influence.damping = on_hessian[top]["best"]
    else:
        cfg.influence.damping = "auto"
    chosen: dict[str, Any] = {}
    for m in cfg.influence.methods:
        if scale(m) is None:
            continue
        opts = cfg.influence.options.setdefault(m, {})
        if m in best:
            opts["damping"] = best[m]["best"]
        elif scale(m) != "hessian":
            opts["damping"] = "auto"
        chosen[m] = opts.get("damping", cfg.influence.damping)
    return chosen
