"""The methods' documentation checked against (and partly generated from) the registry.

- docs/methods.md has one ``## <name>`` section per method (several may share one heading:
  ``## kfac / ekfac — ...``), and a capabilities table generated from the registry between
  ``<!-- registry: capabilities -->`` and ``<!-- end registry -->``;
- the README's methods table (between ``<!-- section: methods -->`` and its end marker) has a row per
  method, its names in backticks in the first cell.

``python -m precompute.influence.docs --write`` regenerates the table; ``--check`` (the test suite)
fails on a missing section, a stale name or an outdated table.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from precompute.influence.base import DAMPING_SCALES
from precompute.influence.registry import registered

ROOT = Path(__file__).resolve().parents[2]
METHODS_MD = ROOT / "docs" / "methods.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- registry: capabilities -->", "<!-- end registry -->"


def capabilities_table() -> str:
    """A markdown table of every registered method's summary and capabilities."""
    rows = ["| method | summary | damping on | needs checkpoints | per-layer | max params | tested vs exact |",
            "|---|---|---|---|---|---:|---|"]
    for name, cls in registered().items():
        c = cls.capabilities
        vs = (f"Spearman >= {c.exact_spearman}" if c.exact_spearman is not None else
              f"rtol {c.exact_rtol:g}" if c.exact_rtol is not None else "–")
        rows.append(f"| `{name}` | {cls.summary} | {c.damping or '–'} | {'yes' if c.needs_checkpoints else 'no'} | "
                    f"{'yes' if c.per_layer else 'no'} | {f'{c.max_params:,}' if c.max_params else '–'} | {vs} |")
    scales = "\n".join(f"- `{k}`: {v}" for k, v in DAMPING_SCALES.items())
    return "\n".join(rows) + "\n\nDamping scales:\n" + scales


def documented_methods(text: str) -> set[str]:
    """Method names that head a ``## `` section (the part before an em dash)."""
    out: set[str] = set()
    for line in text.splitlines():
        if line.startswith("## "):
            head = line[3:].split(" — ")[0]
            out |= set(re.findall(r"[a-z][a-z0-9_]*", head))
    return out


def readme_methods(text: str) -> set[str]:
    """Names in backticks in the first cell of the README methods table's rows."""
    section = text.split("<!-- section: methods -->", 1)[-1].split("<!-- end section: methods -->", 1)[0]
    out: set[str] = set()
    for line in section.splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2 and "`" in cells[1]:
            out |= set(re.findall(r"`([a-z][a-z0-9_]*)`", cells[1]))
    return out


def with_table(text: str) -> str:
    """``text`` (docs/methods.md) with the generated block replaced by the current table."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"{METHODS_MD} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{capabilities_table()}\n{END}{tail}"


def problems(methods_md: str, readme: str) -> list[str]:
    """Everything the docs get wrong about the registry (empty when in sync)."""
    names = set(registered())
    out = []
    doc = documented_methods(methods_md)
    out += [f"docs/methods.md: no '## {m}' section for registered method {m!r}" for m in sorted(names - doc)]
    rd = readme_methods(readme)
    out += [f"README.md methods table: no row for registered method {m!r}" for m in sorted(names - rd)]
    out += [f"README.md methods table: {m!r} is not a registered method" for m in sorted(rd - names)]
    if with_table(methods_md) != methods_md:
        out.append("docs/methods.md: the capabilities table is out of date; run "
                   "`python -m precompute.influence.docs --write`")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="regenerate the capabilities table in docs/methods.md")
    args = ap.parse_args(argv)
    text = METHODS_MD.read_text()
    if args.write:
        METHODS_MD.write_text(with_table(text))
        text = METHODS_MD.read_text()
    found = problems(text, README.read_text())
    for p in found:
        print(p, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
