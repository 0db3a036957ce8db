"""Bring-your-own data/model: every validation error names the file/field and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from precompute.data.image_folder import load_image_folder
from precompute.data.npy import load_npz
from precompute.data.tabular import load_table
from precompute.errors import DataError, ModelError
from precompute.user_model import load_user_model

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def make_image_folder(root: Path, per_class: tuple[int, int] = (6, 2)) -> Path:
    for split, n in zip(("train", "test"), per_class, strict=True):
        for name, color in COLORS.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (12, 12), color).save(root / split / name / f"{i}.png")
    return root


def test_image_folder_mixed_modes_and_sizes(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    Image.new("L", (12, 12), 90).save(root / "train" / "red" / "gray.png")
    with pytest.raises(DataError, match=r"gray.png: mode L differs .*data.image_mode"):
        load_image_folder(root)
    Image.new("RGB", (20, 16), (200, 0, 0)).save(root / "train" / "red" / "odd.png")
    with pytest.raises(DataError, match=r"odd.png: size 20x16 differs .*data.image_size"):
        load_image_folder(root, mode="RGB")
    ds = load_image_folder(root, mode="RGB", size=(12, 12))
    assert ds.x_train.shape == (20, 3, 12, 12) and ds.images_train.shape == (20, 12, 12, 3)
    assert ds.class_names == ["blue", "green", "red"] and np.bincount(ds.y_train).tolist() == [6, 6, 8]
    assert "train/red/gray.png" in ds.extra["train_paths"]
    gray = load_image_folder(root, mode="L", size=(8, 8))
    assert gray.x_train.shape == (20, 1, 8, 8) and gray.images_train.shape == (20, 8, 8)


def test_image_folder_corrupt_file_skip_or_stop(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    (root / "train" / "blue" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken.png: cannot read image.*on_corrupt"):
        load_image_folder(root)
    ds = load_image_folder(root, on_corrupt="skip")
    assert ds.extra["skipped_corrupt"] == [str(root / "train" / "blue" / "broken.png")] and ds.n_train == 18


def test_image_folder_layout_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image folder not found"):
        load_image_folder(tmp_path / "nope")
    root = make_image_folder(tmp_path / "imgs")
    for f in (root / "test").rglob("*.png"):
        f.unlink()
    with pytest.raises(DataError, match="no images found"):
        load_image_folder(root)
    single = tmp_path / "single"
    (single / "cat").mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (4, 4)).save(single / "cat" / f"{i}.png")
    with pytest.raises(DataError, match="single class"):
        load_image_folder(single)


def test_table_validation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    df["label"] = np.repeat(["cat", "dog", "eel"], 20)
    good = tmp_path / "t.csv"
    df.to_csv(good, index=False)
    ds = load_table(good, "label")
    assert ds.class_names == ["cat", "dog", "eel"] and ds.n_train == 48 and ds.x_train.shape == (48, 3)
    assert abs(ds.x_train.mean()) < 0.2 and ds.images_train.shape == (48, 1, 3)
    with pytest.raises(DataError, match=r"t.csv: no label column 'y'.*data.label_column"):
        load_table(good, "y")
    with pytest.raises(DataError, match=r"labels \['eel'\] are not in the class list"):
        load_table(good, "label", class_names=["cat", "dog"])
    bad = df.copy()
    bad.loc[3, "b"] = np.nan
    bad.loc[5, "c"] = np.inf
    bad.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(DataError, match=r"nan.csv: 2 rows have NaN/inf features \(first in 'b'\)"):
        load_table(tmp_path / "nan.csv", "label")
    one = df.assign(label="cat")
    one.to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(DataError, match="single class"):
        load_table(tmp_path / "one.csv", "label")
    empty = df.assign(split="train")
    empty.to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(DataError, match="test split is empty"):
        load_table(tmp_path / "empty.csv", "label")
    unlabeled = df.copy()
    unlabeled.loc[7, "label"] = None
    unlabeled.to_csv(tmp_path / "nolabel.csv", index=False)
    with pytest.raises(DataError, match=r"nolabel.csv: 1 rows have no label in 'label'"):
        load_table(tmp_path / "nolabel.csv", "label")
    with pytest.raises(DataError, match="table not found"):
        load_table(tmp_path / "missing.csv", "label")


def test_npz_validation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {"X_train": rng.normal(size=(30, 4)), "y_train": np.arange(30) % 3,
              "X_test": rng.normal(size=(9, 4)), "y_test": np.arange(9) % 3, "class_names": np.array(["a", "b", "c"])}
    np.savez(tmp_path / "ok.npz", **arrays)
    ds = load_npz(tmp_path / "ok.npz")
    assert ds.class_names == ["a", "b", "c"] and ds.x_test.shape == (9, 4)
    np.savez(tmp_path / "miss.npz", **{k: v for k, v in arrays.items() if k != "y_test"})
    with pytest.raises(DataError, match=r"miss.npz: missing arrays \['y_test'\]"):
        load_npz(tmp_path / "miss.npz")
    arrays_bad = dict(arrays, y_train=np.full(30, 7))
    np.savez(tmp_path / "lab.npz", **arrays_bad)
    with pytest.raises(DataError, match=r"labels \['7'\] are not in the class list"):
        load_npz(tmp_path / "lab.npz")
    imgs = dict(arrays, X_train=rng.random((30, 1, 5, 5)), X_test=rng.random((9, 1, 5, 5)))
    np.savez(tmp_path / "img.npz", **imgs)
    ds = load_npz(tmp_path / "img.npz")
    assert ds.x_train.shape == (30, 1, 5, 5) and ds.images_train.shape == (30, 5, 5)


MODEL_FILE = """
import torch
from torch import nn

def make_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, {n_out}))

def not_a_model():
    return "hello"
"""


def test_user_model_errors(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(MODEL_FILE.format(n_out=3))
    (tmp_path / "m5.py").write_text(MODEL_FILE.format(n_out=5))
    torch.manual_seed(0)
    from importlib import import_module  # noqa: F401  (the factory is imported from a file path)

    ns: dict = {}
    exec(MODEL_FILE.format(n_out=3), ns)
    model = ns["make_model"]()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    example = torch.randn(2, 4)
    loaded, states = load_user_model(f"{tmp_path / 'm.py'}:make_model", [tmp_path / "w.pt"], example, 3)
    assert torch.allclose(loaded(example), model(example)) and len(states) == 1
    with pytest.raises(ModelError, match="returned str, not a torch.nn.Module"):
        load_user_model(f"{tmp_path / 'm.py'}:not_a_model", [], example, 3)
    with pytest.raises(ModelError, match="has no function 'nope'"):
        load_user_model(f"{tmp_path / 'm.py'}:nope", [], example, 3)
    with pytest.raises(ModelError, match="model file not found"):
        load_user_model(f"{tmp_path / 'x.py'}:make_model", [], example, 3)
    with pytest.raises(ModelError, match=r"outputs shape \(1, 5\) but the data has 3 classes"):
        load_user_model(f"{tmp_path / 'm5.py'}:make_model", [], example, 3)
    with pytest.raises(ModelError, match=r"w.pt: does not match.*shape mismatch 3.weight \(3, 8\) vs model \(5, 8\)"):
        load_user_model(f"{tmp_path / 'm5.py'}:make_model", [tmp_path / "w.pt"], example, 5)
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["1.bias"]
    torch.save(state, tmp_path / "keys.pt")
    with pytest.raises(ModelError, match=r"missing keys \['1.bias'\].*unexpected keys \['extra.weight'\]"):
        load_user_model(f"{tmp_path / 'm.py'}:make_model", [tmp_path / "keys.pt"], example, 3)
    torch.save(model, tmp_path / "whole.pt")  # a pickled module, not a state_dict
    with pytest.raises(ModelError, match=r"not a plain state_dict \(refused by torch.load\(weights_only=True\)\)"):
        load_user_model(f"{tmp_path / 'm.py'}:make_model", [tmp_path / "whole.pt"], example, 3)
