"""Bring your own data and model, end to end through the real pipeline and cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cache_format.runs import RunCache
from precompute.api import explain
from precompute.config import load_config
from precompute.pipeline import run_precompute

MODEL_PY = """
from torch import nn

def make_model():
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
"""


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centers = np.array([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]], float)
    return (centers[y] + rng.normal(scale=0.8, size=(n, 4))).astype(np.float32), y


def test_user_model_file_and_python_api_agree(tmp_path: Path) -> None:
    x_tr, y_tr = blobs(90, 0)
    x_te, y_te = blobs(24, 1)
    np.savez(tmp_path / "data.npz", X_train=x_tr, y_train=y_tr, X_test=x_te, y_test=y_te,
             class_names=np.array(["north", "east", "up"]))
    (tmp_path / "model.py").write_text(MODEL_PY)
    ns: dict = {}
    exec(MODEL_PY, ns)
    torch.manual_seed(0)
    model = ns["make_model"]()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.tensor(x_tr)), torch.tensor(y_tr))
        (loss + 0.5e-2 * sum((p * p).sum() for p in model.parameters())).backward()
        opt.step()
    early = {k: v * 0.5 for k, v in model.state_dict().items()}
    torch.save(early, tmp_path / "early.pt")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "run.toml").write_text(f"""
name = "byo"
[data]
source = "npz"
path = "{tmp_path / 'data.npz'}"
[model]
factory = "{tmp_path / 'model.py'}:make_model"
checkpoint = ["{tmp_path / 'early.pt'}", "{tmp_path / 'weights.pt'}"]
checkpoint_lrs = [0.05, 0.01]
[train]
weight_decay = 0.01
epochs = 20
[influence]
methods = ["exact", "graddot", "tracin"]
damping = 0.001
""")
    proc = subprocess.run([sys.executable, "-m", "precompute.cli", "precompute", "--config", str(tmp_path / "run.toml"),
                           "--cache-dir", str(tmp_path / "cache"), "--no-progress"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    run = RunCache(tmp_path / "cache" / "byo")
    assert run.class_names == ["north", "east", "up"] and run.manifest["model"]["arch"] == "model.py:make_model"
    assert run.manifest["model"]["test_accuracy"] > 0.8
    api = explain(model, x_tr, y_tr, x_te, y_te, name="byo-api", cache_dir=tmp_path / "cache",
                  methods=["exact", "graddot", "tracin"], class_names=["north", "east", "up"],
                  checkpoints=[early, model.state_dict()], checkpoint_lrs=[0.05, 0.01], weight_decay=0.01,
                  damping=0.001)
    for method in ("exact", "graddot", "tracin"):
        a, b = np.asarray(run.scores(method)), np.asarray(api.scores(method))
        assert a.shape == (24, 90)
        assert np.allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(a).max()), method
    assert (api.top_proponents("exact", test=0, k=5) == run.method_array("exact", "top_proponents")[0, :5]).all()


def test_csv_table_end_to_end_with_mlp(table_run: Path) -> None:
    """The ``table_run`` fixture (conftest.py): a 150-row CSV of 4 features and 3 species, MLP, exact+graddot."""
    run = RunCache(table_run)
    assert run.class_names == ["setosa", "versicolor", "virginica"]
    assert (run.n_train, run.n_test) == (120, 30)
    assert run.manifest["model"]["test_accuracy"] > 0.8
    assert run.array("train_images").shape == (120, 1, 4)  # feature strips for the UI
    top = run.method_array("exact", "top_proponents")[:, :5]
    same = (run.train_samples()["label"].values[top] == run.test_samples()["label"].values[:, None]).mean()
    assert same > 0.7


def draw_shape(kind: str, size: tuple[int, int], mode: str) -> Image.Image:
    img = Image.new(mode, size, "white" if mode == "RGB" else 255)
    d = ImageDraw.Draw(img)
    w, h = size
    color = {"circle": (200, 30, 30), "square": (30, 160, 30), "triangle": (30, 30, 200)}[kind]
    fill = color if mode == "RGB" else int(sum(color) / 3)
    if kind == "circle":
        d.ellipse([w * 0.2, h * 0.2, w * 0.8, h * 0.8], fill=fill)
    elif kind == "square":
        d.rectangle([w * 0.25, h * 0.25, w * 0.75, h * 0.75], fill=fill)
    else:
        d.polygon([(w * 0.5, h * 0.15), (w * 0.85, h * 0.85), (w * 0.15, h * 0.85)], fill=fill)
    return img


def make_shapes_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for kind in ("circle", "square", "triangle"):
            (root / split / kind).mkdir(parents=True)
            for i in range(n):
                s = int(rng.integers(14, 18))
                draw_shape(kind, (s, s), "RGB").save(root / split / kind / f"{kind}_{i}.png")
    draw_shape("circle", (16, 16), "L").save(root / "train" / "circle" / "gray_circle.png")
    draw_shape("square", (23, 11), "RGB").save(root / "train" / "square" / "odd_square.png")
    return root


def build_shapes_run(tmp_path: Path) -> Path:
    root = make_shapes_folder(tmp_path / "shapes")
    (tmp_path / "shapes.toml").write_text(f"""
name = "shapes"
[data]
source = "image_folder"
path = "{root}"
image_mode = "RGB"
image_size = [16, 16]
[model]
arch = "cnn"
hidden = [16]
[train]
epochs = 30
batch_size = 16
lr = 0.01
[influence]
methods = ["graddot", "tracin"]
[mislabels]
folds = 2
""")
    return run_precompute(load_config(tmp_path / "shapes.toml"), cache_dir=tmp_path / "cache", progress=False,
                          log=lambda _m: None).path


def test_image_folder_end_to_end_with_cnn(tmp_path: Path) -> None:
    path = build_shapes_run(tmp_path)
    run = RunCache(path)
    assert run.class_names == ["circle", "square", "triangle"]
    assert run.array("train_images").shape == (38, 16, 16, 3)
    paths = run.train_samples()["path"].tolist()
    assert "train/circle/gray_circle.png" in paths and "train/square/odd_square.png" in paths
    gray = run.array("train_images")[paths.index("train/circle/gray_circle.png")]
    assert (gray[..., 0] == gray[..., 1]).all()  # the grayscale file was converted to RGB
    assert run.manifest["dataset"]["source"] == "image_folder"


def test_cli_reports_corrupt_images_as_one_line_or_a_count(tmp_path: Path) -> None:
    root = make_shapes_folder(tmp_path / "shapes")
    (root / "train" / "square" / "broken.png").write_bytes(b"\x89PNG truncated")
    base = f"""name = "shapes"
[data]
source = "image_folder"
path = "{root}"
image_mode = "RGB"
image_size = [16, 16]
{{extra}}
[model]
arch = "cnn"
[train]
epochs = 3
[influence]
methods = ["graddot"]
[mislabels]
enabled = false
"""
    cmd = [sys.executable, "-m", "precompute.cli", "precompute", "--config", str(tmp_path / "run.toml"),
           "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    (tmp_path / "run.toml").write_text(base.format(extra=""))
    stop = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = stop.stderr.strip().splitlines()
    assert stop.returncode == 2 and "Traceback" not in stop.stderr
    assert [ln for ln in lines if ln.startswith("error")] == lines[-1:] == [
        f"error: {root / 'train' / 'square' / 'broken.png'}: cannot read image (UnidentifiedImageError); "
        "remove the file or set data.on_corrupt = \"skip\""]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    (tmp_path / "run.toml").write_text(base.format(extra='on_corrupt = "skip"'))
    skip = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert skip.returncode == 0, skip.stderr
    assert "skipped 1 unreadable image(s)" in skip.stdout
    run = RunCache(tmp_path / "cache" / "shapes")
    assert run.manifest["dataset"]["skipped_corrupt_files"] == [str(root / "train" / "square" / "broken.png")]
