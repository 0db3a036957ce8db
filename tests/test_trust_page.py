"""The torch-free trust reader, the plotly builders and the Trust page (Streamlit AppTest)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import plotly.graph_objects as go
import pytest
from helpers import QUIET, copy_run

from cache_format.evaluation import (
    counterfactual_sentence,
    load_trust,
    method_label_with_lds,
    method_lds,
)
from components.trust_figures import (
    agreement_figure,
    brittleness_figure,
    damping_figure,
    lds_figure,
    loo_figure,
)
from precompute.evaluation import (
    BrittlenessSettings,
    DampingSettings,
    EvalSettings,
    LDSSettings,
    LOOSettings,
    evaluate_run,
)

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "explorer" / "app.py")


@pytest.fixture(scope="module")
def trust_cache(logreg_run, tmp_path_factory):
    """A cache folder with an evaluated copy of digits-logreg and an unevaluated one."""
    root = tmp_path_factory.mktemp("trust")
    run = copy_run(logreg_run, root)
    plain = root / "plain"
    shutil.copytree(run, plain)
    m = json.loads((plain / "manifest.json").read_text())
    m["name"] = "plain"
    (plain / "manifest.json").write_text(json.dumps(m))
    settings = EvalSettings(workers=1, lds=LDSSettings(subsets=16, bootstrap=100), loo=LOOSettings(points=6),
                            brittleness=BrittlenessSettings(tests=2, k=[5, 40], random=2, select="low-margin",
                                                            methods=["exact", "graddot"]),
                            damping=DampingSettings(grid=[1e-3, 1.0], tests=20))
    evaluate_run(run, settings, **QUIET)
    return root, run


def test_reader_helpers(trust_cache):
    _, run = trust_cache
    tr = load_trust(run)
    assert tr is not None and not tr.stale
    v = method_lds(run, "exact")
    assert v is not None and v > 0.8
    assert method_label_with_lds(run, "exact") == f"exact (LDS {v:.2f})"
    assert method_label_with_lds(run, "no-such-method") == "no-such-method"
    table = tr.method_table()
    assert list(table["method"]) == ["exact", "graddot", "gradcos", "tracin"]
    assert table["LDS"].notna().all() and table["LOO Pearson"].notna().all()
    assert table.loc[table["method"] == "exact", "best damping"].notna().all()
    assert tr.best_method() == "exact"
    t = tr.part("brittleness")["tests"][0]
    assert counterfactual_sentence(run, t).startswith("Removing its top ")
    assert counterfactual_sentence(run, t, method="graddot").startswith("Removing its top ")
    pred, actual = tr.loo_pairs("exact")
    assert pred.shape == actual.shape == (360, 6)


def test_unevaluated_and_stale_runs(trust_cache, tmp_path):
    root, run = trust_cache
    assert load_trust(root / "plain") is None
    assert method_label_with_lds(root / "plain", "exact") == "exact"
    assert counterfactual_sentence(root / "plain", 0) is None
    stale = copy_run(run, tmp_path)
    shutil.copytree(run / "evaluation", stale / "evaluation")
    m = json.loads((stale / "manifest.json").read_text())
    m["model"]["fingerprint"] = "ffffffffffffffff"
    (stale / "manifest.json").write_text(json.dumps(m))
    assert load_trust(stale).stale
    assert method_lds(stale, "exact") is None and method_label_with_lds(stale, "exact") == "exact"


def test_figures_are_plain_plotly(trust_cache):
    _, run = trust_cache
    tr = load_trust(run)
    figs = [lds_figure(tr.method_table()), damping_figure(tr.damping_frame()), agreement_figure(tr.agreement()),
            agreement_figure(tr.agreement(), "topk_overlap"), brittleness_figure(tr.brittleness_frame()),
            loo_figure(*tr.loo_pairs("exact"), "exact")]
    for f in figs:
        assert isinstance(f, go.Figure) and len(f.data) > 0
        f.to_json()


def test_reader_and_figures_do_not_import_torch():
    code = ("import sys, cache_format.evaluation, components.trust_figures, precompute.evaluation.cli; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _page(root: Path, run: str):
    from streamlit.testing.v1 import AppTest

    os.environ["INFLUENCE_EXPLORER_CACHE"] = str(root)
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"page": "trust", "run": run})
    return at.run()


def test_page_shows_the_evaluation(trust_cache):
    root, run = trust_cache
    at = _page(root, run.name)
    assert not at.exception
    assert any("Best method" in m.value and "exact" in m.value for m in at.markdown)
    assert len(at.dataframe) >= 1
    titles = [h.value for h in at.subheader]
    assert {"Damping sensitivity", "Brittleness: removing the top proponents", "Method agreement"} <= set(titles)


def test_page_explains_how_to_evaluate_an_unevaluated_run(trust_cache):
    root, _ = trust_cache
    at = _page(root, "plain")
    assert not at.exception
    assert any("influence-explorer evaluate plain" in c.value for c in at.code)


def test_influence_view_shows_lds_and_counterfactual(trust_cache, monkeypatch):
    """The influence view labels each method with its LDS and tells what removing the proponents did."""
    from streamlit.testing.v1 import AppTest

    root, run = trust_cache
    t = load_trust(run).part("brittleness")["tests"][0]
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(root))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"page": "influence", "run": run.name, "test": str(t), "method": "exact"})
    at.run()
    assert not at.exception
    picker = at.selectbox(key="w_method")
    assert picker.value == "exact"
    assert method_label_with_lds(run, "exact") in picker.format_func("exact")
    assert "LDS" in picker.format_func("graddot")
    infos = " ".join(i.value for i in at.info)
    assert counterfactual_sentence(run, t, "exact") in infos
