"""The UI reads the cache only: nothing under explorer/ or components/ imports torch or precompute;
and the pages keep their contract: URL state only through explorer.state, runs only through ui."""

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
    """Every UI module, the pages included (importing a page renders nothing), in a fresh interpreter;
    only ``explorer/app.py`` is left out: it is the script Streamlit runs, and it renders."""
    modules = [p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
               for p in _ui_files() if p.relative_to(ROOT).as_posix() != "explorer/app.py"]
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "from explorer.page_spec import discover\n"
        "pages = discover()\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert not bad, bad\n"
        "print(len(pages))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert int(res.stdout.split()[-1]) >= 7
    assert "explorer.ui" in modules and "components.figures" in modules
    assert {"explorer.app_pages.influence", "explorer.app_pages.review", "explorer.app_pages.trust"} <= set(modules)


def _page_files() -> list[Path]:
    return sorted(p for p in (ROOT / "explorer" / "app_pages").glob("*.py") if not p.name.startswith("_"))


def test_pages_keep_the_contract():
    """A page reads and writes the URL only through explorer.state and gets its run only from ui
    (``require_view`` / ``require_run``): no ``st.query_params``, no run opening or run picker of its own."""
    bad = []
    files = _page_files()
    assert len(files) >= 7, files
    for path in files:
        rel = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "query_params":
                bad.append(f"{rel}:{node.lineno} uses query_params (use explorer.state)")
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", "")
                if name in ("open_run", "RunCache", "list_runs", "run_dir", "read_manifest"):
                    bad.append(f"{rel}:{node.lineno} calls {name} (use ui.require_run / ui.require_view)")
                label = node.args[0] if node.args else None
                if (name == "selectbox" and isinstance(label, ast.Constant)
                        and str(label.value).strip().lower() == "run"):
                    bad.append(f"{rel}:{node.lineno} has its own run picker (the sidebar's is the one)")
        for node in ast.parse(path.read_text(), str(path)).body:  # nothing runs at import: only definitions and constants
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                bad.append(f"{rel}:{node.lineno} calls something at import")
    assert not bad, "\n".join(bad)


def test_no_private_streamlit_workarounds():
    """No ``pages/`` folder (Streamlit's legacy auto-discovery), so no PagesManager workaround either."""
    assert not (ROOT / "explorer" / "pages").exists()
    for path in _ui_files():
        text = path.read_text()
        assert "PagesManager" not in text and "ensure_app_navigation" not in text, path
