"""What the app shows for each sample, rendered chunk by chunk into the cache's image arrays.

A :class:`DisplaySource` stands in for the ``images_*`` uint8 arrays of a streamed dataset: it has
the array's ``shape`` ``[n, H, W]`` or ``[n, H, W, 3]`` and renders rows ``start:stop`` on request, so
``arrays/train_images.npy`` is filled chunk by chunk (:func:`write_display`) and never held whole.
Every thumbnail fits in :data:`THUMBNAIL_MAX` x :data:`THUMBNAIL_MAX` pixels (aspect kept); samples
shown as text also get a ``text`` column in ``samples.parquet`` and a small rendering of the text.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from precompute.data.source import SampleSource
from precompute.errors import DataError

#: the longest side of a thumbnail written for the app (larger images are downscaled, aspect kept)
THUMBNAIL_MAX = 64
#: characters kept of a sample's text (the ``text`` column) and its rendering's size
TEXT_MAX_CHARS = 500
TEXT_IMAGE_SHAPE = (16, 64)
#: bytes of thumbnails rendered per chunk
DISPLAY_CHUNK_BYTES = 4 << 20


def thumbnail_size(h: int, w: int, max_side: int = THUMBNAIL_MAX) -> tuple[int, int]:
    """``(h, w)`` scaled down (aspect kept) so the longer side is at most ``max_side``."""
    if max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def fit_pixels(pix: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H, W]`` / ``[H, W, 3]`` resized to ``hw`` (bilinear, antialiased) unless it already is."""
    if pix.shape[:2] == tuple(hw):
        return pix
    return np.asarray(Image.fromarray(pix).resize((hw[1], hw[0]), Image.Resampling.BILINEAR), np.uint8)


def render_text(text: str, shape: tuple[int, int] = TEXT_IMAGE_SHAPE) -> np.ndarray:
    """The start of ``text`` drawn dark on white, uint8 ``[H, W]`` (a thumbnail for text samples)."""
    img = Image.new("L", (shape[1], shape[0]), 255)
    ImageDraw.Draw(img).text((1, 2), " ".join(text.split())[:16], fill=0)
    return np.asarray(img, np.uint8)


def to_image_u8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Images ``[b, H, W]`` / ``[b, C, H, W]`` (C = 1 or 3) float64 -> uint8 ``[b, H, W(, 3)]`` over ``[lo, hi]``
    (the rule the in-memory loaders use)."""
    a = np.array(a, np.float64)  # then in place, in the order of ``round((a - lo) / (hi - lo) * 255)``
    a -= lo
    a /= hi - lo or 1.0
    a *= 255
    a = np.clip(np.round(a, out=a), 0, 255, out=a).astype(np.uint8)
    return a[:, 0] if a.ndim == 4 and a.shape[1] == 1 else (a.transpose(0, 2, 3, 1) if a.ndim == 4 else a)


class DisplaySource(ABC):
    """uint8 thumbnails ``[n, *image_shape]`` rendered on request; ``kind`` is ``"image"`` or ``"text"``."""

    kind = "image"
    dtype = np.dtype(np.uint8)
    n: int
    image_shape: tuple[int, ...]
    #: bytes rendering one row works on (sizes the chunks; default: the thumbnail's)
    work_bytes_per_row: int = 0

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *self.image_shape)

    @abstractmethod
    def render(self, start: int, stop: int) -> tuple[np.ndarray, list[str] | None]:
        """``(thumbnails uint8 [stop - start, *image_shape], texts or None)``."""


class ScaledDisplay(DisplaySource):
    """Thumbnails of array-like inputs: images ``[C, H, W]`` (C = 1 or 3) or ``[H, W]`` scaled over a global ``[lo, hi]``, or
    feature vectors ``[d]`` as one-row strips ``[1, d]`` scaled per feature (``lo``, ``hi`` ``[d]``)."""

    def __init__(self, source: SampleSource, lo: Any, hi: Any, strips: bool):
        self.source, self.lo, self.hi, self.strips = source, lo, hi, strips
        self.n = len(source)
        self.work_bytes_per_row = 16 * int(np.prod(source.sample_shape))  # float64 rows and one temporary
        if strips:
            self.image_shape = (1, int(np.prod(source.sample_shape)))
        else:
            c, h, w = source.sample_shape if len(source.sample_shape) == 3 else (1, *source.sample_shape)
            th, tw = thumbnail_size(h, w)
            self.image_shape = (th, tw, 3) if c == 3 else (th, tw)

    def render(self, start: int, stop: int) -> tuple[np.ndarray, None]:
        a = self.source.read_raw(start, stop)
        if self.strips:
            a = a.reshape(len(a), -1)
            scaled = (a - self.lo) / np.where(self.hi > self.lo, self.hi - self.lo, 1.0)
            return np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)[:, None, :], None
        pix = to_image_u8(a, self.lo, self.hi)
        hw = self.image_shape[:2]
        return np.stack([fit_pixels(p, hw) for p in pix]) if len(pix) else pix.reshape(0, *self.image_shape), None


class PixelDisplay(DisplaySource):
    """Thumbnails from ``pixels(i) -> uint8 [H, W(, 3)]`` (an image folder's decoded files)."""

    def __init__(self, pixels: Callable[[int], np.ndarray], n: int, pixel_shape: tuple[int, ...]):
        self.pixels, self.n = pixels, n
        th, tw = thumbnail_size(pixel_shape[0], pixel_shape[1])
        self.image_shape = (th, tw, *pixel_shape[2:])

    def render(self, start: int, stop: int) -> tuple[np.ndarray, None]:
        hw = self.image_shape[:2]
        out = np.zeros((stop - start, *self.image_shape), np.uint8)
        for j, i in enumerate(range(start, stop)):
            out[j] = fit_pixels(self.pixels(i), hw)
        return out, None


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


class HookDisplay(DisplaySource):
    """The user's display hook ``show(i)`` -> a PIL image / uint8 array (a thumbnail) or a str / dict
    (a text snippet: a ``text`` column plus a rendering). The first sample fixes the kind, the mode
    and the thumbnail size; later images are converted and resized to match."""

    def __init__(self, show: Callable[[int], Any], n: int, where: str):
        self.show, self.n, self.where = show, n, where
        first = self._call(0)
        if isinstance(first, str | dict):
            self.kind, self.mode = "text", None
            self.image_shape = TEXT_IMAGE_SHAPE
        else:
            img = self._image(first, 0)
            self.mode = "L" if img.mode in ("L", "1", "I", "I;16", "F") else "RGB"
            th, tw = thumbnail_size(img.height, img.width)
            self.image_shape = (th, tw) if self.mode == "L" else (th, tw, 3)

    def _call(self, i: int) -> Any:
        try:
            return self.show(i)
        except Exception as exc:  # the user's code: one line naming the hook and the sample
            raise DataError(f"{self.where}: display hook failed on sample {i} ({type(exc).__name__}: {exc}); "
                            "fix it or remove the hook") from None

    def _image(self, value: Any, i: int) -> Image.Image:
        if isinstance(value, Image.Image):
            return value
        if isinstance(value, np.ndarray) and value.dtype == np.uint8 and (
                value.ndim == 2 or (value.ndim == 3 and value.shape[2] in (1, 3))):
            return Image.fromarray(value[..., 0] if value.ndim == 3 and value.shape[2] == 1 else value)
        raise DataError(f"{self.where}: display hook returned {type(value).__name__} for sample {i}; return a PIL "
                        "image, a uint8 array [H, W] or [H, W, 3], a str or a dict")

    def render(self, start: int, stop: int) -> tuple[np.ndarray, list[str] | None]:
        out = np.zeros((stop - start, *self.image_shape), np.uint8)
        texts: list[str] | None = [] if self.kind == "text" else None
        for j, i in enumerate(range(start, stop)):
            value = self._call(i)
            if texts is not None:
                if not isinstance(value, str | dict):
                    raise DataError(f"{self.where}: display hook returned {type(value).__name__} for sample {i} "
                                    "but text for sample 0; return the same kind for every sample")
                texts.append(_describe(value)[:TEXT_MAX_CHARS])
                out[j] = render_text(texts[-1], self.image_shape)
            else:
                img = self._image(value, i).convert(self.mode)
                out[j] = fit_pixels(np.asarray(img, np.uint8), self.image_shape[:2])
        return out, texts


def write_display(writer: Any, name: str, images: np.ndarray | DisplaySource) -> list[str] | None:
    """Write ``arrays/<name>.npy``: an in-memory array at once, a :class:`DisplaySource` chunk by chunk
    into a memmap made with ``writer.open_array`` (each chunk mapped, written, flushed and unmapped, so
    resident memory holds one chunk). Returns the samples' texts for a text display, else None."""
    if isinstance(images, np.ndarray):
        writer.save_array(name, images)
        return None
    mm = writer.open_array(name, images.shape, np.uint8)
    path = mm.filename
    del mm
    texts: list[str] | None = [] if images.kind == "text" else None
    per_row = max(int(np.prod(images.image_shape)), images.work_bytes_per_row, 1)
    step = max(1, DISPLAY_CHUNK_BYTES // per_row)
    for s in range(0, len(images), step):
        e = min(s + step, len(images))
        pix, t = images.render(s, e)
        out = np.load(path, mmap_mode="r+")
        out[s:e] = pix
        out.flush()
        del out
        if texts is not None:
            texts.extend(t or [])
    return texts


class SubsetDisplay(DisplaySource):
    """The thumbnails of rows ``index`` of another display (training samples left after an exclusion)."""

    def __init__(self, base: DisplaySource, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, np.int64)
        self.kind, self.n, self.image_shape = base.kind, len(self.index), base.image_shape
        self.work_bytes_per_row = base.work_bytes_per_row

    def render(self, start: int, stop: int) -> tuple[np.ndarray, list[str] | None]:
        rows = self.index[start:stop]
        images, texts = [], []
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1  # runs of consecutive base rows, rendered together
        for run in np.split(rows, cuts) if len(rows) else []:
            img, txt = self.base.render(int(run[0]), int(run[-1]) + 1)
            images.append(img)
            texts.append(txt)
        out = np.concatenate(images) if images else np.zeros((0, *self.image_shape), np.uint8)
        return out, (None if not texts or texts[0] is None else [t for part in texts for t in part])


def subset_display(images: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of thumbnails: an array's copy, or a lazy :class:`SubsetDisplay`."""
    return SubsetDisplay(images, index) if isinstance(images, DisplaySource) else np.asarray(images)[index]
