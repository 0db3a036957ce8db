"""Image folders in the common layout ``root/<split>/<class>/*.png|jpg|...`` or ``root/<class>/*``.

Every image is read with pillow, converted to one mode (``L`` grayscale or ``RGB``) and one size.
Problems are reported naming the file: corrupt images are skipped with a count or stop the run
(``on_corrupt``), mixed sizes or modes without a configured target size/mode stop the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from precompute.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class ImageFolderReport:
    """What was read: counts per split and the corrupt files that were skipped."""

    skipped: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_image_folder(root: str | Path) -> dict[str, list[tuple[Path, str]]]:
    """``{"train": [(file, class_name)], "test": [...]}`` or ``{"all": [...]}`` for one folder of classes."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found; set data.path to a folder of <class>/ subfolders")
    splits = {s: root / s for s in ("train", "test") if (root / s).is_dir()}
    if "train" in splits and "test" not in splits:
        raise DataError(f"{root}: has train/ but no test/ folder; add {root / 'test'} or put class folders "
                        "directly under the root and set data.test_fraction")
    groups = {name: d for name, d in splits.items()} if splits else {"all": root}
    out: dict[str, list[tuple[Path, str]]] = {}
    for split, d in groups.items():
        files = [(f, c.name) for c in _class_dirs(d) for f in sorted(c.rglob("*"))
                 if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise DataError(f"{d}: no images found (expected {d}/<class_name>/*.png|jpg); check data.path")
        out[split] = files
    return out


def read_images(files: list[Path], mode: str | None, size: tuple[int, int] | None, on_corrupt: str,
                report: ImageFolderReport) -> tuple[np.ndarray, list[int]]:
    """Read, convert and resize; returns ``(pixels uint8 [m, H, W] or [m, H, W, 3], kept indices)``."""
    arrays: list[np.ndarray] = []
    kept: list[int] = []
    first: dict = {}
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im.load()
                if mode is None and first.setdefault("mode", (im.mode, f))[0] != im.mode:
                    m0, f0 = first["mode"]
                    raise DataError(f"{f}: mode {im.mode} differs from {f0} ({m0}); set data.image_mode = "
                                    "\"L\" or \"RGB\" to convert every image")
                img = im.convert(mode or ("RGB" if im.mode not in ("L", "1", "I", "I;16", "F") else "L"))
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            if on_corrupt == "skip":
                report.skipped.append(str(f))
                continue
            raise DataError(f"{f}: cannot read image ({type(exc).__name__}); remove the file or set "
                            "data.on_corrupt = \"skip\"") from None
        if size is None:
            s0, f0 = first.setdefault("size", (img.size, f))
            if img.size != s0:
                raise DataError(f"{f}: size {img.size[0]}x{img.size[1]} differs from {f0} ({s0[0]}x{s0[1]}); "
                                "set data.image_size = [height, width] to resize every image")
        else:
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        arrays.append(np.asarray(img, dtype=np.uint8))
        kept.append(i)
    if not arrays:
        raise DataError("no readable image in the folder; check data.path")
    return np.stack(arrays), kept


def to_model_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 ``[n, H, W]`` or ``[n, H, W, 3]`` -> float32 ``[n, C, H, W]`` in [0, 1]."""
    x = pixels.astype(np.float32) / 255.0
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def load_image_folder(root: str | Path, mode: str | None = None, size: tuple[int, int] | None = None,
                      test_fraction: float = 0.2, seed: int = 0, on_corrupt: str = "error",
                      class_names: list[str] | None = None):
    """Read an image folder into a :class:`SplitDataset`; file paths go to ``extra['train_paths']``."""
    from precompute.data.dataset import SplitDataset
    from precompute.data.tabular import check_labels, encode_labels, stratified_split

    root = Path(root)
    groups = scan_image_folder(root)
    report = ImageFolderReport()
    files = {s: [f for f, _ in items] for s, items in groups.items()}
    labels = {s: np.array([c for _, c in items]) for s, items in groups.items()}
    all_labels = np.concatenate(list(labels.values()))
    _, names = encode_labels(all_labels, class_names, f"{root} class folders")
    read: dict[str, tuple[np.ndarray, list[Path], np.ndarray]] = {}
    target_size = size
    for split in groups:
        pix, kept = read_images(files[split], mode, target_size, on_corrupt, report)
        if target_size is None:
            target_size = pix.shape[1:3]  # every split must match the first split's size
        y, _ = encode_labels(labels[split][kept], names, f"{root}/{split}")
        read[split] = (pix, [files[split][i] for i in kept], y)
    if "all" in read:
        pix, paths, y = read["all"]
        tr, te = stratified_split(len(y), y, test_fraction, seed)
        read = {"train": (pix[tr], [paths[i] for i in tr], y[tr]), "test": (pix[te], [paths[i] for i in te], y[te])}
    (p_tr, f_tr, y_tr), (p_te, f_te, y_te) = read["train"], read["test"]
    if p_tr.shape[1:] != p_te.shape[1:]:
        raise DataError(f"{root}: train images are {p_tr.shape[1:]} but test images {p_te.shape[1:]}; set "
                        "data.image_size and data.image_mode so both splits convert to the same shape")
    check_labels(y_tr, y_te, names, str(root))
    report.counts = {"train": len(y_tr), "test": len(y_te)}
    return SplitDataset(
        name=root.name, x_train=to_model_input(p_tr), y_train=y_tr.copy(), x_test=to_model_input(p_te), y_test=y_te,
        images_train=p_tr, images_test=p_te, class_names=names, y_train_original=y_tr.copy(),
        flipped=np.zeros(len(y_tr), bool), train_source_index=np.arange(len(y_tr)),
        test_source_index=np.arange(len(y_te)),
        extra={"train_paths": [str(f.relative_to(root)) for f in f_tr],
               "test_paths": [str(f.relative_to(root)) for f in f_te],
               "skipped_corrupt": report.skipped, "source_path": str(root)},
    )
