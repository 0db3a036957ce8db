"""The explorer on a user's own data (issue 5): an image folder of RGB shapes and a CSV table,
both built with the real pipeline, rendered by the real pages under streamlit.testing's AppTest.

Checks that the pages show the user's own pictures (decoded from the page: RGB, crisp
nearest-neighbour upscales of the cached 16x16 arrays, or 1-row feature strips for a table),
their class names, and the source file of a sample.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cache_format.runs import RunCache

APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")
SHAPES = ("circle", "square", "triangle")
IMG = re.compile(r'<img[^>]*?src="data:image/png;base64,([^"]+)"[^>]*?alt="([^"]+)"[^>]*>')

pytestmark = pytest.mark.slow


def _page(run: Path, page: str, monkeypatch, **params: object) -> AppTest:
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(run.parent))
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in {"page": page, "run": run.name, **params}.items():
        at.query_params[k] = str(v)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _images(at: AppTest) -> dict[str, tuple[np.ndarray, str]]:
    """Every inline image of the page by alt text: (pixels, the whole ``<img>`` tag), from markdown
    and HTML elements (the cards' bodies are ``st.html``)."""
    out = {}
    for body in [md.value for md in at.markdown] + _html(at):
        for m in IMG.finditer(body):
            pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(m.group(1)))))
            out[html.unescape(m.group(2))] = (pixels, m.group(0))
    return out


def _html(at: AppTest) -> list[str]:
    return [h.proto.body for h in at.get("html")]


def _text(at: AppTest) -> str:
    parts = [e.value for e in (*at.markdown, *at.caption, *at.title, *at.subheader)] + _html(at)  # e.g. the bars
    parts += [json.loads(c.proto.spec)["data"] for c in at.get("plotly_chart")]
    return "\n".join(map(str, parts))


def _crisp_upscale_of(pixels: np.ndarray, cached: np.ndarray) -> bool:
    """``pixels`` is ``cached`` upscaled by an integer factor with nearest neighbour (every block one colour)."""
    f = pixels.shape[0] // cached.shape[0]
    return (f >= 1 and pixels.shape[:2] == (cached.shape[0] * f, cached.shape[1] * f)
            and np.array_equal(pixels, np.repeat(np.repeat(cached, f, axis=0), f, axis=1)))


def test_influence_page_shows_the_users_rgb_images_and_class_names(shapes_run: Path, monkeypatch):
    run = RunCache(shapes_run)
    assert run.class_names == list(SHAPES)
    at = _page(shapes_run, "influence", monkeypatch, test=0, method="graddot")
    imgs = _images(at)
    top = run.method_array("graddot", "top_proponents")[0, :8].tolist()
    train_imgs = run.array("train_images")
    for i in top:
        pixels, tag = imgs[f"train #{i}"]
        assert pixels.shape == (96, 96, 3)  # RGB, 16 px x 6, no interpolation:
        assert _crisp_upscale_of(pixels, np.asarray(train_imgs[i]))
        assert f'title="{run.train_samples()["path"].iloc[i]}"' in tag  # hover shows the user's file
    big, _ = imgs["test #0 (large)"]
    assert big.shape == (224, 224, 3) and _crisp_upscale_of(big, np.asarray(run.array("test_images")[0]))
    colourful = np.abs(big.astype(int) - big.mean(axis=2, keepdims=True)).max()
    assert colourful > 50  # a red/green/blue shape, not a grey thumbnail
    text = _text(at)
    for name in SHAPES:
        assert name in text, name
    test_path = run.test_samples()["path"].iloc[0]
    assert any(test_path in c.value for c in at.caption)


def test_training_sample_view_shows_the_source_file(shapes_run: Path, monkeypatch):
    run = RunCache(shapes_run)
    paths = run.train_samples()["path"].tolist()
    for rel in ("train/circle/gray_circle.png", "train/square/odd_square.png"):
        i = paths.index(rel)
        at = _page(shapes_run, "influence", monkeypatch, test=0, train=i, method="graddot")
        assert at.title[0].value.startswith(f"Training sample #{i}")
        file_captions = [c for c in at.caption if rel in c.value]
        assert len(file_captions) == 1
        root = run.manifest["dataset"]["source_path"]
        assert f"{root}/{rel}" in file_captions[0].proto.help  # the full path on hover
        big, _ = _images(at)[f"train #{i} (large)"]
        assert big.shape == (224, 224, 3) and _crisp_upscale_of(big, np.asarray(run.array("train_images")[i]))
        if rel.startswith("train/circle/gray"):
            assert (big[..., 0] == big[..., 1]).all()  # the grayscale file, converted to RGB
    assert "circle" in _text(at) and "square" in _text(at)


def test_predictions_gallery_shows_every_test_image(shapes_run: Path, monkeypatch):
    run = RunCache(shapes_run)
    at = _page(shapes_run, "predictions", monkeypatch, test=0, method="graddot")
    imgs = {alt: v for alt, v in _images(at).items() if alt.startswith("test #")}
    assert len(imgs) == run.n_test == 12  # one page holds them all
    test_imgs = run.array("test_images")
    for alt, (pixels, tag) in imgs.items():
        j = int(alt.split("#")[1])
        assert pixels.shape == (96, 96, 3) and _crisp_upscale_of(pixels, np.asarray(test_imgs[j]))
        assert f'title="{run.test_samples()["path"].iloc[j]}"' in tag
    text = _text(at)
    for name in SHAPES:
        assert name in text, name


def test_table_samples_render_as_crisp_feature_strips(table_run: Path, monkeypatch):
    run = RunCache(table_run)
    strips = run.array("train_images")
    assert strips.shape[1:] == (1, 4)
    at = _page(table_run, "influence", monkeypatch, test=0, method="graddot")
    imgs = _images(at)
    i = int(run.method_array("graddot", "top_proponents")[0, 0])
    pixels, tag = imgs[f"train #{i}"]
    assert pixels.shape == (24, 96)  # [1, 4] -> 24 px per feature, a visible band
    assert _crisp_upscale_of(pixels, np.asarray(strips[i]))
    assert "title=" not in tag  # no source files for a table
    big, _ = imgs["test #0 (large)"]
    assert big.shape == (56, 224) and _crisp_upscale_of(big, np.asarray(run.array("test_images")[0]))
    assert all(name in _text(at) for name in ("setosa", "versicolor", "virginica"))
    assert not [c for c in at.caption if "File:" in c.value]
    at = _page(table_run, "predictions", monkeypatch)
    gallery = [p for alt, (p, _) in _images(at).items() if alt.startswith("test #")]
    assert len(gallery) == min(18, run.n_test) and all(p.shape == (24, 96) for p in gallery)
