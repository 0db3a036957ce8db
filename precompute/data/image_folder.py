"""Image folders in the common layout ``root/<split>/<class>/*.png|jpg|...`` or ``root/<class>/*``.

Every image is read with pillow, converted to one mode (``L`` grayscale or ``RGB``) and one size.
Files are listed and checked from their headers when the dataset is loaded and decoded per batch
when a stage reads them (nothing holds the whole folder in memory). Problems are reported naming
the file: corrupt images are skipped with a count or stop the run (``on_corrupt``), mixed sizes or
modes without a configured target size/mode stop the run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from precompute.config import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from precompute.errors import DataError

#: largest image file read (width x height from its header; larger ones are refused or skipped
#: like corrupt files, before any pixel is decoded: no decompression bombs)
MAX_FILE_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_FILE_PIXELS  # pillow's own guard at the same limit (raised past 2x)
# pillow's warning between 1x and 2x is replaced by this module's own check (refused or skipped)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class ImageFolderReport:
    """What was read: counts per split and the corrupt files that were skipped."""

    skipped: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class _TooLarge(Exception):
    """An image whose header claims more pixels than :data:`MAX_FILE_PIXELS`."""


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
    real_root = root.resolve()
    for split, d in groups.items():
        files = [(f, c.name) for c in _class_dirs(d) for f in sorted(c.rglob("*"))
                 if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        for f, _ in files:
            target = f.resolve()
            if not target.is_relative_to(real_root):
                raise DataError(f"{f}: a symbolic link to {target}, outside data.path {root}; links out of the data "
                                "folder are refused: copy the file into the folder or remove the link")
        if not files:
            raise DataError(f"{d}: no images found (expected {d}/<class_name>/*.png|jpg); check data.path")
        out[split] = files
    return out


def _convert_mode(raw: str, mode: str | None) -> str:
    return mode or ("RGB" if raw not in ("L", "1", "I", "I;16", "F") else "L")


def check_images(files: list[Path], mode: str | None, size: tuple[int, int] | None, on_corrupt: str,
                 report: ImageFolderReport) -> tuple[list[int], str, tuple[int, ...]]:
    """Check every file from its header (``Image.open`` + ``verify``: no pixels decoded) with the
    messages of a full read; returns ``(kept indices, conversion mode, pixel shape [H, W] or [H, W, 3])``."""
    kept: list[int] = []
    first: dict = {}
    conv = mode
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                if mode is None and first.setdefault("mode", (im.mode, f))[0] != im.mode:
                    m0, f0 = first["mode"]
                    raise DataError(f"{f}: mode {im.mode} differs from {f0} ({m0}); set data.image_mode = "
                                    "\"L\" or \"RGB\" to convert every image")
                conv, wh = _convert_mode(im.mode, mode), im.size
                if wh[0] * wh[1] > MAX_FILE_PIXELS:
                    raise _TooLarge(f"{wh[0]}x{wh[1]} pixels, over the limit of {MAX_FILE_PIXELS:,}")
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError, _TooLarge) as exc:
            if on_corrupt == "skip":
                report.skipped.append(str(f))
                continue
            what = f"too large: {exc}" if isinstance(exc, _TooLarge) else type(exc).__name__
            raise DataError(f"{f}: cannot read image ({what}); remove the file or set "
                            "data.on_corrupt = \"skip\"") from None
        if size is None:
            if max(wh) > MAX_IMAGE_SIDE or wh[0] * wh[1] > MAX_IMAGE_PIXELS:
                raise DataError(f"{f}: {wh[0]}x{wh[1]} pixels is too large a model input (at most {MAX_IMAGE_SIDE} a "
                                "side); set data.image_size = [height, width] to resize every image")
            s0, f0 = first.setdefault("size", (wh, f))
            if wh != s0:
                raise DataError(f"{f}: size {wh[0]}x{wh[1]} differs from {f0} ({s0[0]}x{s0[1]}); "
                                "set data.image_size = [height, width] to resize every image")
        kept.append(i)
    if not kept:
        raise DataError("no readable image in the folder; check data.path")
    hw = tuple(size) if size is not None else (first["size"][0][1], first["size"][0][0])
    return kept, str(conv), (*hw, 3) if conv == "RGB" else hw


class ImageFiles(torch.utils.data.Dataset):
    """Image files decoded on access: ``pixels(i)`` uint8 ``[H, W]`` / ``[H, W, 3]`` (converted to
    ``mode``, resized to ``size`` [height, width] if given) and ``self[i]`` the model input float32
    ``[C, H, W]`` in [0, 1]."""

    def __init__(self, files: list[Path], mode: str, size: tuple[int, int] | None, pixel_shape: tuple[int, ...]):
        self.files, self.mode, self.size, self.pixel_shape = files, mode, size, tuple(pixel_shape)

    def __len__(self) -> int:
        return len(self.files)

    def pixels(self, i: int) -> np.ndarray:
        f = self.files[i]
        try:
            with Image.open(f) as im:
                if im.size[0] * im.size[1] > MAX_FILE_PIXELS:
                    raise _TooLarge(f"{im.size[0]}x{im.size[1]} pixels, over the limit of {MAX_FILE_PIXELS:,}")
                im.load()
                img = im.convert(self.mode)
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError, _TooLarge) as exc:
            raise DataError(f"{f}: cannot decode image ({type(exc).__name__}: {exc}); the file is truncated or "
                            "changed since it was listed: remove or replace it") from None
        if self.size is not None:
            img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
        pix = np.asarray(img, dtype=np.uint8)
        if pix.shape != self.pixel_shape:
            raise DataError(f"{f}: decodes to {pix.shape}, not {self.pixel_shape} like the others; set "
                            "data.image_size and data.image_mode")
        return pix

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(to_model_input(self.pixels(int(i))[None])[0])

    def subset(self, index: list[int] | np.ndarray) -> ImageFiles:
        return ImageFiles([self.files[i] for i in index], self.mode, self.size, self.pixel_shape)


def to_model_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 ``[n, H, W]`` or ``[n, H, W, 3]`` -> float32 ``[n, C, H, W]`` in [0, 1]."""
    x = pixels.astype(np.float32) / 255.0
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def load_image_folder(root: str | Path, mode: str | None = None, size: tuple[int, int] | None = None,
                      test_fraction: float = 0.2, seed: int = 0, on_corrupt: str = "error",
                      class_names: list[str] | None = None, workers: int = 0, lazy: bool = True):
    """An image folder as a :class:`SplitDataset`; file paths go to ``extra['train_paths']``.

    ``lazy`` (the pipeline's way): every file is checked from its header now and decoded only when
    a batch needs it (``x_*`` are :class:`DatasetSource` s read with ``workers`` DataLoader processes;
    ``images_*`` thumbnails at most 64 px a side, rendered chunk by chunk into the cache). Otherwise
    every image is decoded now into in-memory arrays (full-resolution ``images_*``).
    """
    from precompute.data.dataset import SplitDataset
    from precompute.data.display import PixelDisplay
    from precompute.data.source import DatasetSource
    from precompute.data.tabular import check_labels, encode_labels, stratified_split

    root = Path(root)
    groups = scan_image_folder(root)
    report = ImageFolderReport()
    labels = {s: np.array([c for _, c in items]) for s, items in groups.items()}
    _, names = encode_labels(np.concatenate(list(labels.values())), class_names, f"{root} class folders")
    read: dict[str, tuple[ImageFiles, np.ndarray]] = {}
    target_size = size
    for split, items in groups.items():
        files = [f for f, _ in items]
        kept, conv, pix_shape = check_images(files, mode, target_size, on_corrupt, report)
        read[split] = (ImageFiles([files[i] for i in kept], conv, target_size, pix_shape),
                       encode_labels(labels[split][kept], names, f"{root}/{split}")[0])
        if target_size is None:
            target_size = pix_shape[:2]  # every split must match the first split's size
    if "all" in read:
        files, y = read["all"]
        tr, te = stratified_split(len(y), y, test_fraction, seed)
        read = {"train": (files.subset(tr), y[tr]), "test": (files.subset(te), y[te])}
    (f_tr, y_tr), (f_te, y_te) = read["train"], read["test"]
    if f_tr.pixel_shape != f_te.pixel_shape:
        raise DataError(f"{root}: train images are {f_tr.pixel_shape} but test images {f_te.pixel_shape}; set "
                        "data.image_size and data.image_mode so both splits convert to the same shape")
    check_labels(y_tr, y_te, names, str(root))
    report.counts = {"train": len(y_tr), "test": len(y_te)}
    if lazy:
        shape = to_model_input(np.zeros((1, *f_tr.pixel_shape), np.uint8)).shape[1:]
        x_tr, x_te = (DatasetSource(f, shape, workers, pairs=False) for f in (f_tr, f_te))
        img_tr, img_te = (PixelDisplay(f.pixels, len(f), f.pixel_shape) for f in (f_tr, f_te))
    else:
        p_tr, p_te = (np.stack([f.pixels(i) for i in range(len(f))]) for f in (f_tr, f_te))
        x_tr, x_te, img_tr, img_te = to_model_input(p_tr), to_model_input(p_te), p_tr, p_te
    return SplitDataset(
        name=root.name, x_train=x_tr, y_train=y_tr.copy(), x_test=x_te, y_test=y_te,
        images_train=img_tr, images_test=img_te, class_names=names, y_train_original=y_tr.copy(),
        flipped=np.zeros(len(y_tr), bool), train_source_index=np.arange(len(y_tr)),
        test_source_index=np.arange(len(y_te)),
        extra={"train_paths": [str(f.relative_to(root)) for f in f_tr.files],
               "test_paths": [str(f.relative_to(root)) for f in f_te.files],
               "skipped_corrupt": report.skipped, "source_path": str(root), "streamed": lazy},
    )
