"""Request images -> the model's uint8 [N, C, H, W], or a 4xx that names the field.

Uploads (PNG, JPEG, or anything else Pillow reads) of any size or mode are converted to the
model's channels and size the same way the image-folder dataset is (``genlab.imageio.to_array``:
alpha composited on black, mode converted, centre-cropped to a square, resized). Arrays must
already have the model's exact shape and integer pixel values 0..255.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from genlab.imageio import to_array


class RequestError(Exception):
    """Bad input: answered with ``status`` and a JSON body naming the field."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": str(self), "field": self.field}


def decode_upload(path: Path, field: str, shape: tuple[int, int, int], max_bytes: int, max_pixels: int) -> np.ndarray:
    """One uploaded file -> uint8 [C, H, W] in the model's shape."""
    size = path.stat().st_size
    if size > max_bytes:
        raise RequestError(field, f"file is {size:,} bytes; the limit is {max_bytes:,}", 413)
    if size == 0:
        raise RequestError(field, "file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > max_pixels:
                    raise RequestError(field, f"image is {image.width}x{image.height}; the limit is {max_pixels:,} pixels", 413)
                image.load()
                return to_array(image, shape[0], shape[1])
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError(field, "not an image Pillow can read (send PNG or JPEG)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise RequestError(field, f"broken or truncated image ({err})") from None


def images_from_request(files: Sequence[Path] | None, array: Any, shape: tuple[int, int, int], max_images: int,
                        max_bytes: int, max_pixels: int) -> np.ndarray:
    """Exactly one of ``images`` (uploads) or ``array`` (nested lists) -> uint8 [N, C, H, W]."""
    if files and array is not None:
        raise RequestError("images", "send either image files or 'array', not both")
    if not files and array is None:
        raise RequestError("images", "no images: upload files as 'images' (multipart) or send 'array' (JSON)")
    if files:
        if len(files) > max_images:
            raise RequestError("images", f"{len(files)} images; the limit is {max_images}", 413)
        return np.stack([decode_upload(Path(f), f"images[{i}]", shape, max_bytes, max_pixels) for i, f in enumerate(files)])
    return array_to_images(array, "array", shape, max_images)


def array_to_images(array: Any, field: str, shape: tuple[int, int, int], max_images: int) -> np.ndarray:
    """Nested lists of integer pixels 0..255, shaped [N, C, H, W] (or one [C, H, W] image)."""
    try:
        values = np.asarray(array, dtype=np.float64)
    except (ValueError, TypeError):
        raise RequestError(field, "must be a rectangular nested list of numbers") from None
    values = _image_batch(values, field, shape, max_images)
    if not np.isfinite(values).all() or (values != np.round(values)).any() or values.min() < 0 or values.max() > 255:
        raise RequestError(field, "pixels must be integers 0..255 (uint8)", 422)
    return values.astype(np.uint8)


def latents_from_request(z: Any, latent_dim: int, max_images: int) -> np.ndarray:
    """Explicit latents [k, latent_dim] as nested lists -> float32, refusing NaN/inf."""
    try:
        values = np.asarray(z, dtype=np.float64)
    except (ValueError, TypeError):
        raise RequestError("z", "must be a rectangular list of lists of numbers") from None
    return _checked_latents(values, "z", latent_dim, max_images)


def _checked_latents(values: np.ndarray, field: str, latent_dim: int, max_images: int) -> np.ndarray:
    if values.ndim != 2 or values.shape[1] != latent_dim or values.shape[0] == 0:
        raise RequestError(field, f"shape {list(values.shape)} does not match [n, {latent_dim}] for this model", 422)
    if values.shape[0] > max_images:
        raise RequestError(field, f"{values.shape[0]} latents; the limit is {max_images}", 413)
    if not np.isfinite(values).all():
        raise RequestError(field, "contains NaN or infinity", 422)
    if np.abs(values).max() > 1e4:
        raise RequestError(field, "values beyond +-1e4 are not latents of a N(0, I) prior", 422)
    return values.astype(np.float32)


def read_npy(path: Path, field: str, max_bytes: int) -> np.ndarray:
    """An uploaded .npy file -> its array; never unpickles (``allow_pickle=False``)."""
    size = Path(path).stat().st_size
    if size > max_bytes:
        raise RequestError(field, f"file is {size:,} bytes; the limit is {max_bytes:,}", 413)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise RequestError(field, f"not a .npy file numpy can read without pickle ({str(err)[:160]})") from None
    if not isinstance(array, np.ndarray):
        raise RequestError(field, "send one array saved with numpy.save (.npy), not an .npz archive")
    return array


def latents_from_npy(path: Path, field: str, latent_dim: int, max_images: int, max_bytes: int) -> np.ndarray:
    """A .npy of float latents [N, latent_dim] -> float32."""
    array = read_npy(path, field, max_bytes)
    if array.dtype.kind not in "fiu":
        raise RequestError(field, f"dtype {array.dtype} is not numeric; send float32 latents", 422)
    return _checked_latents(array.astype(np.float64), field, latent_dim, max_images)


def images_from_npy(path: Path, field: str, shape: tuple[int, int, int], max_images: int, max_bytes: int) -> np.ndarray:
    """A .npy of uint8 images [N, C, H, W] (or one [C, H, W]) in the model's exact shape."""
    array = read_npy(path, field, max_bytes)
    if array.dtype != np.uint8:
        raise RequestError(field, f"dtype {array.dtype}; send uint8 pixels 0..255", 422)
    return np.ascontiguousarray(_image_batch(array, field, shape, max_images))


def _image_batch(values: np.ndarray, field: str, shape: tuple[int, int, int], max_images: int) -> np.ndarray:
    """[N, C, H, W] in the model's exact shape (one [C, H, W] image becomes N = 1), at most ``max_images``."""
    if values.ndim == 3:
        values = values[None]
    if values.ndim != 4 or tuple(values.shape[1:]) != tuple(shape) or values.shape[0] == 0:
        raise RequestError(field, f"shape {list(values.shape)} does not match this model's [N, {', '.join(map(str, shape))}]", 422)
    if values.shape[0] > max_images:
        raise RequestError(field, f"{values.shape[0]} images; the limit is {max_images}", 413)
    return values
