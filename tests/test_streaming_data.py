"""Streaming data: lazy sample sources, memory-mapped npy/npz, lazily decoded image folders, user
Dataset factories; every streamed path builds the same cache as the in-memory one."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cache_format.runs import RunCache
from precompute.cache import CacheWriter
from precompute.config import DataConfig, InfluenceConfig, ModelConfig, RunConfig, TrainConfig
from precompute.data.display import HookDisplay, write_display
from precompute.data.factory import load_factory_dataset
from precompute.data.image_folder import load_image_folder
from precompute.data.npy import load_npz
from precompute.data.source import ArraySource, DatasetSource, SampleArray, as_model_input
from precompute.data.tabular import arrays_to_dataset
from precompute.errors import ConfigError, DataError
from precompute.models import build_model
from precompute.pipeline import run_precompute
from precompute.training import train_model

QUIET = {"progress": False, "log": lambda _m: None}
NAMES = ["a", "b", "c"]


def blob_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``[n, 1, 6, 6]`` float32 images whose mean depends on the class, labels ``[n]``."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, 1, 6, 6)) * 0.5 + y[:, None, None, None] - 1.0
    return x.astype(np.float32), y.astype(np.int64)


def small_cfg(name: str, **data) -> RunConfig:
    """A fast run: small MLP, 3 epochs, graddot only, no mislabel stage."""
    cfg = RunConfig(name=name, device="cpu", data=DataConfig(**data), model=ModelConfig(arch="mlp", hidden=[8]),
                    train=TrainConfig(epochs=3, batch_size=16, checkpoints=1), influence=InfluenceConfig(
                        methods=["graddot"], topk=5))
    cfg.mislabels.enabled = False
    return cfg


ARRAYS = ("train_probs", "test_probs", "train_features", "test_features", "embedding", "train_images", "test_images")
METHOD_ARRAYS = ("top_proponents", "top_proponent_scores", "top_opponents", "top_opponent_scores", "self_influence")


def assert_same_cache(a: Path, b: Path) -> None:
    """Same arrays, scores, top-k and samples.parquet (to float32 rounding where floats are compared)."""
    ra, rb = RunCache(a), RunCache(b)
    for name in ARRAYS:
        np.testing.assert_allclose(ra.array(name), rb.array(name), rtol=1e-5, atol=1e-6, err_msg=name)
    for name in METHOD_ARRAYS:
        np.testing.assert_allclose(ra.method_array("graddot", name), rb.method_array("graddot", name), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    np.testing.assert_allclose(ra.scores("graddot"), rb.scores("graddot"), rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(pd.read_parquet(a / "samples.parquet"), pd.read_parquet(b / "samples.parquet"))
    assert ra.manifest["dataset"]["fingerprint"] == rb.manifest["dataset"]["fingerprint"]
    assert ra.class_names == rb.class_names


FACTORY_PY = """
import numpy as np
import torch
from torch.utils.data import Dataset


class Arrays(Dataset):
    classes = {names!r}
    def __init__(self, x, y):
        self.x, self.y = x, y
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), int(self.y[i])


def make_datasets():
    z = np.load({data!r})
    return Arrays(z["X_train"], z["y_train"]), Arrays(z["X_test"], z["y_test"])
"""


@pytest.fixture(scope="module")
def arrays(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray], Path]:
    """Blob images saved three ways, and the in-memory reference run built from the same arrays."""
    root = tmp_path_factory.mktemp("stream")
    (x_tr, y_tr), (x_te, y_te) = blob_images(90, 0), blob_images(30, 1)
    arr = {"X_train": x_tr, "y_train": y_tr, "X_test": x_te, "y_test": y_te}
    np.savez(root / "data.npz", **arr, class_names=np.array(NAMES))
    (root / "npy").mkdir()
    for k, v in {**arr, "class_names": np.array(NAMES)}.items():
        np.save(root / "npy" / f"{k}.npy", v)
    ds = arrays_to_dataset("ref", x_tr, y_tr, x_te, y_te, NAMES)
    ref = run_precompute(small_cfg("ref", source="python"), cache_dir=root / "cache", dataset=ds, **QUIET).path
    return root, arr, ref


def test_factory_run_matches_in_memory_run(arrays) -> None:
    root, _, ref = arrays
    (root / "make.py").write_text(FACTORY_PY.format(names=NAMES, data=str(root / "data.npz")))
    cfg = small_cfg("factory", source="factory", factory=f"{root / 'make.py'}:make_datasets")
    run = run_precompute(cfg, cache_dir=root / "cache", **QUIET).path
    assert_same_cache(run, ref)
    m = RunCache(run).manifest["dataset"]
    assert m["streamed"] is True and m["source"] == "factory" and m["class_names"] == NAMES
    cfg = small_cfg("factory-w2", source="factory", factory=f"{root / 'make.py'}:make_datasets", workers=2)
    assert_same_cache(run_precompute(cfg, cache_dir=root / "cache", **QUIET).path, ref)  # DataLoader workers


def test_npy_folder_and_npz_memmap_match_in_memory(arrays) -> None:
    root, arr, ref = arrays
    ref_ds = arrays_to_dataset("ref", arr["X_train"], arr["y_train"], arr["X_test"], arr["y_test"], NAMES)
    np.savez_compressed(root / "packed.npz", **arr)
    for path in (root / "npy", root / "data.npz", root / "packed.npz"):
        ds = load_npz(path, NAMES)
        assert isinstance(ds.x_train, ArraySource) and ds.x_train.shape == (90, 1, 6, 6)
        assert torch.equal(SampleArray(ds.x_train)[:], torch.from_numpy(ref_ds.x_train)), path
        np.testing.assert_array_equal(ds.images_train.render(0, 90)[0], ref_ds.images_train)
        assert ds.fingerprint() == ref_ds.fingerprint() and ds.class_names == NAMES
    assert (root / ".packed.npz-mmap" / "X_train.npy").is_file()  # compressed members extracted once, beside
    with np.load(root / "data.npz") as z:  # the uncompressed archive is mapped in place: no extraction
        assert z["X_train"].shape == (90, 1, 6, 6) and not (root / ".data.npz-mmap").exists()
    run = run_precompute(small_cfg("npy", source="npz", path=str(root / "npy")), cache_dir=root / "cache", **QUIET).path
    assert_same_cache(run, ref)


def test_sample_array_indexing_semantics(tmp_path: Path) -> None:
    base = np.arange(7 * 2 * 3, dtype=np.float32).reshape(7, 2, 3)
    np.save(tmp_path / "x.npy", base)
    ref = torch.from_numpy(base)
    for src in (ArraySource(base), ArraySource.from_npy(str(tmp_path / "x.npy"))):
        x = SampleArray(src)
        assert len(x) == 7 and x.shape == (7, 2, 3) and x.dtype == torch.float32 and x.device.type == "cpu"
        assert torch.equal(x[3], ref[3]) and torch.equal(x[-1], ref[-1]) and torch.equal(x[np.int64(2)], ref[2])
        for key in (slice(1, 5), slice(None, None, 2), slice(-3, None), slice(5, 2), slice(None, 100)):
            assert torch.equal(x[key], ref[key]), key
        for idx in ([4, 0, 4], np.array([6, -1, 2]), torch.tensor([1, 3]), []):
            want = ref[torch.as_tensor(np.asarray(idx, np.int64))]
            assert torch.equal(x[idx], want), idx
        mask = np.array([True, False, True, False, False, True, True])
        assert torch.equal(x[mask], ref[torch.from_numpy(mask)]) and torch.equal(x[torch.from_numpy(mask)], x[mask])
        assert x.to("cpu") is x and x.to(torch.float64)[2:4].dtype == torch.float64
        assert torch.equal(x.to(torch.float64)[1], ref[1].double()) and x.cpu() is x
        sub = x.subset([5, 1])
        assert isinstance(sub, SampleArray) and torch.equal(sub[:], ref[[5, 1]]) and torch.equal(sub[-1], ref[1])
        assert torch.equal(torch.cat(list(x.batches(3))), ref)
        with pytest.raises(IndexError):
            x[7]
        with pytest.raises(IndexError):
            x[[0, 9]]
        with pytest.raises(IndexError):
            x[np.ones(3, bool)]
        with pytest.raises(TypeError, match="indexes rows only"):
            x[:, 0]
    ds = torch.utils.data.TensorDataset(ref, torch.zeros(7, dtype=torch.long))
    for workers in (0, 2):  # the DataLoader path: split over worker processes, same rows in the same order
        x = SampleArray(DatasetSource(ds, (2, 3), workers=workers))
        assert torch.equal(x[[6, 0, 3, 3]], ref[[6, 0, 3, 3]]) and torch.equal(x[2:5], ref[2:5])
        got = list(x.iter_index_batches([np.array([1, 2]), torch.tensor([6, 5, 4])]))
        assert torch.equal(got[0], ref[[1, 2]]) and torch.equal(got[1], ref[[6, 5, 4]])


def test_lazy_training_equals_tensor_training() -> None:
    (x, y) = blob_images(60, 2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    lazy = as_model_input(ArraySource(x), torch.float32, "cpu")
    assert isinstance(lazy, SampleArray) and isinstance(as_model_input(x, torch.float32, "cpu"), torch.Tensor)
    for opt, exact in (("adam", True), ("lbfgs", False)):
        cfg = TrainConfig(optimizer=opt, epochs=1, batch_size=16, lr=0.05 if opt == "adam" else 1.0, checkpoints=1)
        models = [build_model(ModelConfig(arch="logreg"), (1, 6, 6), 3) for _ in range(2)]
        train_model(models[0], xt, yt, cfg)
        train_model(models[1], lazy, yt, cfg)
        for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
            assert torch.equal(p, q) if exact else torch.allclose(p, q, rtol=1e-4, atol=1e-5), opt


def make_folder(root: Path, size: tuple[int, int] = (10, 10), per_class: tuple[int, int] = (10, 4)) -> Path:
    rng = np.random.default_rng(0)
    colors = {"red": (200, 40, 40), "green": (40, 180, 40), "blue": (40, 40, 200)}
    for split, n in zip(("train", "test"), per_class, strict=True):
        for name, color in colors.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = rng.integers(-40, 40, size=(size[0], size[1], 3))
                pix = np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pix).save(root / split / name / f"{i}.png")
    Image.new("RGB", (13, 7), (200, 40, 40)).save(root / "train" / "red" / "odd.png")  # resized on read
    return root


def test_lazy_image_folder_run_matches_in_memory_run(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs")
    lazy = load_image_folder(root, "RGB", (10, 10))
    eager = load_image_folder(root, "RGB", (10, 10), lazy=False)
    assert isinstance(lazy.x_train, DatasetSource) and isinstance(eager.x_train, np.ndarray)
    assert lazy.x_train.shape == eager.x_train.shape == (31, 3, 10, 10) and lazy.images_train.shape == (31, 10, 10, 3)
    cfg = small_cfg("imgs", source="image_folder", path=str(root), image_mode="RGB", image_size=[10, 10])
    run = run_precompute(cfg, cache_dir=tmp_path / "lazy", **QUIET).path
    ref = run_precompute(cfg, cache_dir=tmp_path / "eager", dataset=eager, **QUIET).path
    assert_same_cache(run, ref)
    assert "train/red/odd.png" in RunCache(run).train_samples()["path"].tolist()


def test_thumbnails_are_bounded_and_written_in_chunks(tmp_path: Path, monkeypatch) -> None:
    import precompute.data.display as display

    root = make_folder(tmp_path / "big", size=(80, 100), per_class=(3, 2))
    ds = load_image_folder(root, "RGB", (80, 100))
    assert ds.x_train.shape == (10, 3, 80, 100) and ds.images_train.shape == (10, 51, 64, 3)
    monkeypatch.setattr(display, "DISPLAY_CHUNK_BYTES", 3 * 51 * 64 * 3)  # 3 thumbnails per chunk: 4 chunks
    with CacheWriter(tmp_path / "cache" / "run") as w:
        assert write_display(w, "train_images", ds.images_train) is None
        got = np.load(w.path("arrays/train_images.npy"))
        assert w.arrays["arrays/train_images.npy"] == {"shape": [10, 51, 64, 3], "dtype": "uint8"}
        w.abort()
    eager = load_image_folder(root, "RGB", (80, 100), lazy=False)
    want = np.stack([np.asarray(Image.fromarray(p).resize((64, 51), Image.Resampling.BILINEAR)) for p in
                     eager.images_train])
    np.testing.assert_array_equal(got, want)


TEXT_PY = """
import torch
from torch.utils.data import Dataset
from PIL import Image


class Words(Dataset):
    def __init__(self, n, offset):
        self.n, self.offset = n, offset
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        y = (i + self.offset) % 3
        return torch.full((4,), float(y)) + 0.1 * torch.arange(4.0) * (i % 5), y


class Pictures(Words):
    def display(self, i):
        return Image.new("RGB", (100, 50), (i * 10 % 255, 0, 0))


def make_datasets():
    return Words(45, 0), Words(15, 1)


def make_pictures():
    return Pictures(6, 0), Pictures(3, 1)


def display(split, index):
    return f"{split} word {index}" if split == "train" else {"id": index, "kind": "test"}
"""


def test_display_hooks_text_column_and_pictures(tmp_path: Path) -> None:
    (tmp_path / "words.py").write_text(TEXT_PY)
    cfg = small_cfg("words", source="factory", factory=f"{tmp_path / 'words.py'}:make_datasets")
    run = RunCache(run_precompute(cfg, cache_dir=tmp_path / "cache", **QUIET).path)
    samples = pd.read_parquet(run.path / "samples.parquet")
    assert samples["text"].tolist()[:2] == ["train word 0", "train word 1"]
    assert samples.query("split == 'test'")["text"].iloc[3] == "id: 3; kind: test"
    images = run.array("train_images")
    assert images.shape == (45, 16, 64) and images.min() < 128 < images.max()  # the text is drawn
    assert run.class_names == ["0", "1", "2"] and run.manifest["dataset"]["display"] == "text"
    pics = load_factory_dataset(f"{tmp_path / 'words.py'}:make_pictures")
    assert isinstance(pics.images_train, HookDisplay) and pics.images_train.shape == (6, 32, 64, 3)
    thumbs, texts = pics.images_train.render(0, 3)
    assert texts is None and thumbs[2, 5, 5].tolist() == [20, 0, 0]


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def test_memmapped_npy_is_never_loaded_whole(tmp_path: Path) -> None:
    """20k x 3x32x32 float32 (245 MB): loading (validation pass), fingerprint, a full batched pass and
    the chunked thumbnails grow peak RSS by well under the file size."""
    n, shape = 20_000, (3, 32, 32)
    rng = np.random.default_rng(0)
    folder = tmp_path / "npy"
    folder.mkdir()
    for key, rows in (("X_train", n), ("X_test", 500)):
        mm = np.lib.format.open_memmap(folder / f"{key}.npy", mode="w+", dtype=np.float32, shape=(rows, *shape))
        for s in range(0, rows, 1000):
            mm[s:s + 1000] = rng.random((min(1000, rows - s), *shape), dtype=np.float32)
        mm.flush()
        del mm
    np.save(folder / "y_train.npy", np.arange(n) % 10)
    np.save(folder / "y_test.npy", np.arange(500) % 10)
    file_mb = (folder / "X_train.npy").stat().st_size / 2**20
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak RSS")
    base = _status_kb("VmRSS")
    ds = load_npz(folder)
    fingerprint = ds.fingerprint()
    x = as_model_input(ds.x_train, torch.float32, "cpu")
    corner = torch.cat([xb[:, 0, 0, 0].clone() for xb in x.batches(512)])  # clone: a view keeps its batch
    with CacheWriter(tmp_path / "cache" / "run") as w:
        write_display(w, "train_images", ds.images_train)
        w.abort()
    growth_mb = (_status_kb("VmHWM") - base) / 1024
    print(f"\npeak RSS growth {growth_mb:.1f} MB for a {file_mb:.0f} MB memory-mapped X_train")
    assert growth_mb < file_mb / 5, f"peak RSS grew {growth_mb:.0f} MB reading a {file_mb:.0f} MB file"
    ref = np.load(folder / "X_train.npy", mmap_mode="r")
    assert torch.equal(corner, torch.from_numpy(np.array(ref[:, 0, 0, 0]))) and len(fingerprint) == 16


FACTORY_ERRORS_PY = """
import torch
from torch.utils.data import Dataset, TensorDataset


class Items(Dataset):
    classes = ["a", "b"]
    def __init__(self, make, n=6):
        self.make, self.n = make, n
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        return self.make(i)


def good(i):
    return torch.ones(4) * i, i % 2


def boom(i):
    if i == 2:
        raise ValueError("boom")
    return good(i)


single = lambda: TensorDataset(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))  # noqa: E731
tensors = lambda: (torch.zeros(3, 4), torch.zeros(3))  # noqa: E731
not_tensor = lambda: (Items(lambda i: ([0.0] * 4, 0)), Items(good))  # noqa: E731
bad_label = lambda: (Items(lambda i: (torch.ones(4), 2 if i == 3 else 0)), Items(good))  # noqa: E731
float_label = lambda: (Items(lambda i: (torch.ones(4), 0.5)), Items(good))  # noqa: E731
ragged = lambda: (Items(lambda i: (torch.ones(4 if i < 2 else 5), 0)), Items(good))  # noqa: E731
raises = lambda: (Items(boom), Items(good))  # noqa: E731
empty = lambda: (Items(good, n=0), Items(good))  # noqa: E731
"""


@pytest.mark.parametrize("func, needle", [
    ("nope", r"has no function 'nope'; define it or fix data.factory"),
    ("single", r"returned TensorDataset, not a \(train, test\) pair"),
    ("tensors", r"returned a Tensor as the train dataset, not a map-style torch.utils.data.Dataset"),
    ("not_tensor", r"train sample 0: x is a list, not a torch.Tensor"),
    ("bad_label", r"train sample 3 has label 2, outside 0..1 \(classes \['a', 'b'\]\)"),
    ("float_label", r"train sample 0: y is float 0.5, not an int class index"),
    ("ragged", r"train sample 2: x has shape \(5,\) but sample 0 has \(4,\)"),
    ("raises", r"reading train sample 2 failed \(ValueError: boom\)"),
    ("empty", r"the train dataset is empty"),
])
def test_bad_factories_are_one_line_errors(tmp_path: Path, func: str, needle: str) -> None:
    (tmp_path / "bad.py").write_text(FACTORY_ERRORS_PY)
    with pytest.raises(DataError, match=needle) as info:
        load_factory_dataset(f"{tmp_path / 'bad.py'}:{func}")
    assert "\n" not in str(info.value) and "bad.py" in str(info.value)


def test_factory_config_and_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope.py: datasets file not found; set data.factory"):
        load_factory_dataset(f"{tmp_path / 'nope.py'}:make_datasets")
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(DataError, match=r"broken.py: importing the datasets file failed \(ModuleNotFoundError"):
        load_factory_dataset(f"{tmp_path / 'broken.py'}:make_datasets")
    with pytest.raises(ConfigError, match=r"data.factory: file not found"):
        DataConfig(source="factory", factory=f"{tmp_path / 'nope.py'}:make").validate()
    with pytest.raises(ConfigError, match=r"data.factory: must look like 'path/to/file.py:make_datasets'"):
        DataConfig(source="factory").validate()
    with pytest.raises(ConfigError, match=r"data.workers: must be an integer >= 0"):
        DataConfig(workers=-1).validate()


@pytest.mark.usefixtures("one_torch_thread")
def test_every_estimator_works_unchanged_on_lazy_rows() -> None:
    """Each registered method slices ``task.x_train`` (batches, random index batches, HVPs over the
    training set): on a SampleArray it gives the scores it gives on the same rows as a tensor."""
    import dataclasses

    from precompute.influence import available_methods, estimator_class, get_estimator
    from precompute.influence._toy import tiny_task
    from precompute.influence.runner import compute_scores, compute_self_influence

    base, xs, ys = tiny_task("cnn", n_train=40, n_test=8, damping=0.1, epochs=10)
    xt32, xs32 = base.x_train.float().numpy(), xs.float().numpy()  # sources hold float32 rows
    dense = dataclasses.replace(base, x_train=torch.from_numpy(xt32).double())
    lazy = dataclasses.replace(base, x_train=SampleArray(ArraySource(xt32), torch.float64))
    xs_lazy = SampleArray(DatasetSource(torch.utils.data.TensorDataset(torch.from_numpy(xs32), ys), (1, 6, 6)),
                          torch.float64)
    for method in available_methods():
        if estimator_class(method).capabilities.needs_evaluation:
            continue  # datamodels: fitted to evaluate's retrained subsets, not to task.x_train
        opts = dict(estimator_class(method).quick_options)
        want = compute_scores(get_estimator(method, opts), dense, torch.from_numpy(xs32).double(), ys, 16, 4)
        est = get_estimator(method, opts)
        got = compute_scores(est, lazy, xs_lazy, ys, 16, 4)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max(), err_msg=method)
        assert np.isfinite(compute_self_influence(est, lazy, 16)).all(), method
