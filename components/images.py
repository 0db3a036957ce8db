"""Turning cached images (uint8 ``[H, W]`` grayscale, ``[H, W, 3]`` RGB, or ``[1, d]`` feature strips of
a table) into crisp thumbnails.

Small images are upscaled by an integer factor with nearest-neighbour sampling, so that an 8x8
digit stays a grid of sharp pixels instead of a blur.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def to_uint8(img: np.ndarray) -> np.ndarray:
    """``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[1|3, H, W]`` (uint8 or float in [0, 1]) -> uint8 ``[H, W(, 3)]``."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)  # channels-first
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ValueError(f"expected an image [H, W] or [H, W, 3], got shape {np.shape(img)}")
    if a.dtype != np.uint8:
        a = np.asarray(a, dtype=np.float32)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return a


def upscale(img: np.ndarray, size: int) -> Image.Image:
    """A PIL image whose long side is the largest integer multiple of the original that fits ``size``.

    Nearest-neighbour throughout, so pixels stay sharp squares; only a big photo (short side over
    ``size``) is shrunk smoothly. A one-row feature strip ``[1, d]`` (a table sample) is also
    stretched to at least ``size // 8`` pixels across, so that it stays visible as a band of cells.
    """
    a = to_uint8(img)
    pil = Image.fromarray(a, mode="L" if a.ndim == 2 else "RGB")
    h, w = a.shape[:2]
    long = max(h, w)
    if long <= size:
        factor = size // long
        out, resample = (w * factor, h * factor), Image.Resampling.NEAREST
    else:  # bigger than asked: shrink (smoothly, unless it is a thin strip of discrete cells)
        scale = size / long
        out = (max(1, round(w * scale)), max(1, round(h * scale)))
        resample = Image.Resampling.NEAREST if min(h, w) <= 4 else Image.Resampling.LANCZOS
    short = max(1, size // 8)
    if min(out) < short:  # thin strip: thicken the short side
        out = (max(out[0], short), max(out[1], short))
        resample = Image.Resampling.NEAREST
    return pil.resize(out, resample)


def png_bytes(img: np.ndarray, size: int = 96) -> bytes:
    """PNG-encoded thumbnail of ``img`` (see :func:`upscale`)."""
    buf = io.BytesIO()
    upscale(img, size).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def data_uri(img: np.ndarray, size: int = 96) -> str:
    """``data:image/png;base64,...`` thumbnail, usable in HTML and in ``st.column_config.ImageColumn``."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(img, size)).decode("ascii")
