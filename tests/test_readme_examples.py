"""The README's Python API example runs as written (in a temporary working directory)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def test_python_api_example_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    block = re.search(r"<!-- readme-example: python-api -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README lost its Python API example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(block.group(1), namespace)
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("iris") and (tmp_path / "cache" / "iris" / "manifest.json").is_file()
    assert out[1] == "(30, 120)"
    result = namespace["result"]
    top = result.top_proponents("exact", test=0, k=5)
    assert np.array_equal(top, np.argsort(-np.asarray(result.scores("exact")[0]))[:5])
