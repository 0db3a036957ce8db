"""The UI reads the cache only: nothing under explorer/ or components/ imports torch or precompute."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("torch", "precompute")


def _ui_files() -> list[Path]:
    return sorted(p for d in ("explorer", "components") for p in (ROOT / d).rglob("*.py"))


def test_no_forbidden_import_statements():
    bad = []
    files = _ui_files()
    assert len(files) >= 10, files  # the scan really sees the UI
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__" and node.args:
                arg = node.args[0]
                names = [arg.value] if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else []
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                    if n.split(".")[0] in FORBIDDEN]
    assert not bad, "\n".join(bad)


def test_importing_the_ui_loads_neither_torch_nor_precompute():
    modules = [p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".") for p in _ui_files()
               if "pages" not in p.parts and p.name != "app.py"]  # pages and app.py run on import
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(len(sys.modules)); assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "explorer.ui" in modules and "components.figures" in modules
