"""Torch-free image I/O: decode and convert images, tile grids, write PNGs (atomically, see :mod:`genlab.files`).

Used by dataset readers (image folders), the training loop's sample grids and, because it
needs only numpy and Pillow, by the serving side.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image

from genlab.files import atomic_write_bytes

_MODES = {1: "L", 3: "RGB"}


def to_array(image: Image.Image, channels: int, size: int) -> np.ndarray:
    """Any PIL image -> uint8 [C, size, size]: mode converted, centre-cropped square, resized.

    Transparent images are composited on black first, so alpha never turns into noise.
    """
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    image = centre_square(image.convert(_MODES[channels]))
    side = image.size[0]
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC if side < size else Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)


def centre_square(image: Image.Image) -> Image.Image:
    """The largest square at the centre of ``image`` (the crop :func:`to_array` makes, which masks follow)."""
    w, h = image.size
    if w == h:
        return image
    left, top, side = centre_square_box(w, h)
    return image.crop((left, top, left + side, top + side))


def centre_square_box(width: int, height: int) -> tuple[int, int, int]:
    """Where :func:`centre_square` crops a ``width`` x ``height`` image: (left, top, side) in its pixels."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def tile(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """uint8 [N, C, H, W] -> one uint8 [H', W', C] grid image, ``nrow`` images per row."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    grid = np.zeros((padding + ncol * (h + padding), padding + nrow * (w + padding), c), np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = images[i].transpose(1, 2, 0)
    return grid


def encode_png(array: np.ndarray) -> bytes:
    """uint8 [H, W, C] (C = 1 or 3) or [H, W] -> PNG bytes."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: int | None = None) -> None:
    """Tile uint8 [N, C, H, W] images and write them as one PNG, atomically."""
    atomic_write_bytes(path, encode_png(tile(images, nrow)))


def resize_map(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """A float map [h, w] -> float32 [height, width], bilinear on the float values (PIL mode "F"); the same array
    where it already has that size. The one resize of anomaly maps: to a mask's size (evaluation) and to an
    upload's (the service)."""
    if values.shape == (height, width):
        return values
    image = Image.fromarray(np.ascontiguousarray(values, np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), np.float32)
