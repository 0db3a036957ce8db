"""One source of truth: the registry drives everything that lists methods; the docs agree with it; the
packages import in one direction only (no cycles; precompute never imports the UI; the format layer
imports neither torch nor either half)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from precompute.influence import damped_methods, registered
from precompute.influence.docs import METHODS_MD, README, problems

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cache_format", "precompute", "explorer", "components")


# --------------------------------------------------------------------------------------- docs
def test_docs_and_readme_agree_with_the_registry():
    assert problems(METHODS_MD.read_text(), README.read_text()) == []


def test_the_docs_check_catches_a_missing_section_and_a_stale_table():
    text = METHODS_MD.read_text()
    without_cg = "\n".join(line for line in text.splitlines() if not line.startswith("## cg"))
    assert any("no '## cg' section" in p for p in problems(without_cg, README.read_text()))
    stale = text.replace("| `cg` |", "| `cg_old` |")
    assert any("out of date" in p for p in problems(stale, README.read_text()))


# ------------------------------------------------------------------------- damping from eval
def test_from_eval_never_hands_a_method_another_scales_lambda(tmp_path):
    from precompute.config import RunConfig
    from precompute.influence.from_eval import apply_damping_from_eval

    run = tmp_path / "r"
    (run / "evaluation").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    results = {"damping": {"methods": {"exact": {"best": 0.01, "best_lds": 0.9},
                                       "cg": {"best": 0.1, "best_lds": 0.5}}}}
    (run / "evaluation" / "results.json").write_text(json.dumps(results))
    cfg = RunConfig()
    cfg.influence.methods = ["exact", "cg", "trak", "graddot"]
    cfg.influence.damping = f"from-eval:{run}"
    chosen = apply_damping_from_eval(cfg, tmp_path)
    assert cfg.influence.damping == 0.01  # best of the best-LDS Hessian-scale method
    assert chosen == {"exact": 0.01, "cg": 0.1, "trak": "auto"}  # trak: its own kernel's rule, not 0.01
    assert "graddot" not in cfg.influence.options
    assert set(damped_methods()) == {m for m, c in registered().items() if c.capabilities.damping}
    assert "trak" in damped_methods() and "graddot" not in damped_methods()


# ------------------------------------------------------------------------------------ imports
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return {_module_name(p): p for p in files}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in ``path`` (function-level too, TYPE_CHECKING blocks not)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    me = _module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
            out |= subs or {base}
    return {m for m in out if m in modules and m != me}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles_and_the_checker_sees_one():
    graph = _graph()
    assert len(graph) > 60 and graph["precompute.pipeline"]  # the scan really sees the tree
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    assert _cycle({**graph, "precompute.errors": {"precompute.pipeline"}}) is not None


def test_dependencies_point_one_way():
    graph = _graph()
    bad = [f"{m} imports {n}" for m, deps in graph.items() for n in deps
           if (m.startswith("precompute") and n.split(".")[0] in ("explorer", "components"))
           or (m.startswith("cache_format") and n.split(".")[0] != "cache_format")
           or (m.split(".")[0] in ("explorer", "components") and n.startswith("precompute"))]
    assert not bad, bad


def test_every_module_imports_in_topological_order_in_a_fresh_interpreter():
    graph = _graph()
    order: list[str] = []
    done: set[str] = set()

    def visit(m: str) -> None:
        if m in done:
            return
        done.add(m)
        for n in sorted(graph[m]):
            visit(n)
        order.append(m)

    for m in sorted(graph):
        visit(m)
    order = [m for m in order if m != "explorer.app"]  # the Streamlit entry point renders on import
    code = ("import importlib, sys\n"
            f"for m in {order!r}:\n    importlib.import_module(m)\n"
            "cf = [m for m in sys.modules if m.startswith('cache_format')]\n"
            "print(len(cf))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    solo = subprocess.run([sys.executable, "-c", "import sys, cache_format.runs, cache_format.evaluation, "
                           "cache_format.mislabels, cache_format.metrics, cache_format.atomic; "
                           "assert 'torch' not in sys.modules and 'precompute' not in sys.modules"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert solo.returncode == 0, solo.stderr[-2000:]


# --------------------------------------------------------------- a new estimator is one file
DUMMY = '''"""Test fixture: the gradient dot product shrunk by the damping (a method added as one file)."""

from precompute.influence.base import Capabilities, InfluenceEstimator


class Dummy(InfluenceEstimator):
    """score(t, i) = g_t . g_i / (1 + lambda)."""

    name = "dummy"
    summary = "test fixture: graddot / (1 + lambda)"
    capabilities = Capabilities(damping="hessian")

    def train_factors(self, x, y):
        return self._require_fit().gradients(x, y)

    def query_factors(self, x, y):
        task = self._require_fit()
        return task.gradients(x, y) / (1.0 + self.damping_for(task))
'''

PROBE = '''
from precompute.cli import main
from precompute.config import RunConfig
from precompute.evaluation.damping import damped_methods
from precompute.influence import available_methods
from precompute.influence.registry import check_influence_config
cfg = RunConfig(); cfg.influence.methods = ["dummy", "graddot"]; check_influence_config(cfg.influence)
assert "dummy" in available_methods()
assert damped_methods(["graddot", "dummy", "exact"]) == ["dummy", "exact"]
main(["methods"])
'''


@pytest.mark.slow
def test_a_new_estimator_file_is_picked_up_everywhere(tmp_path):
    copy = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("cache_format", "precompute", "sample_data", "docs", "tests"):
        shutil.copytree(ROOT / d, copy / d, ignore=ignore)
    shutil.copy(ROOT / "README.md", copy / "README.md")
    (copy / "precompute" / "influence" / "dummy.py").write_text(DUMMY)
    env = {**os.environ, "PYTHONPATH": str(copy)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=600)

    probe = run("-c", PROBE)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert "dummy" in probe.stdout and "test fixture" in probe.stdout  # `influence-explorer methods`
    tests = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_estimator_contract.py", "-k", "dummy")
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert tests.stdout.splitlines()[-1].startswith("5 passed"), tests.stdout[-500:]  # sign, diagonal, chunking, damping, checkpoints
    docs = run("-m", "precompute.influence.docs")
    assert docs.returncode == 1 and "no '## dummy' section" in docs.stderr
    md = copy / "docs" / "methods.md"
    md.write_text(md.read_text() + "\n## dummy — test fixture\nGradient dot product over (1 + lambda).\n")
    readme = copy / "README.md"
    readme.write_text(readme.read_text().replace("<!-- end section: methods -->",
                                                 "| `dummy` | test | - |\n<!-- end section: methods -->"))
    fixed = run("-m", "precompute.influence.docs", "--write")
    assert fixed.returncode == 0, fixed.stderr
