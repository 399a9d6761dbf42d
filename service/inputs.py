"""Request images -> the model's uint8 [N, C, H, W], class labels -> int64 indices, or a 4xx that names the field.

Uploads (PNG, JPEG, or anything else Pillow reads) of any size or mode are converted to the
model's channels and size the same way the image-folder dataset is (``genlab.imageio.to_array``:
alpha composited on black, mode converted, centre-cropped to a square, resized); each keeps its size
as sent (:class:`Images`), for answers laid over it. Arrays must already have the model's exact
shape and integer pixel values 0..255.

Class labels (for conditional models) are resolved by one rule everywhere (:func:`labels_from_request`):
an int is an index 0..K-1; a string is a class name or, if no name matches and it is a decimal
integer, an index. A model that is not conditional refuses every label.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import StrictInt, StrictStr
from starlette.datastructures import UploadFile

from genlab.imageio import to_array
from genlab.web import RequestError

# one class, by index or name: strict, so that JSON true or 7.5 is refused instead of read as 1 or 7
Label = StrictInt | StrictStr
Labels = Label | list[Label] | None  # one class for every image, or one per image
CLASSES_SHOWN = 20  # a refusal lists at most this many class names


@dataclass(frozen=True)
class Images:
    """A request's images in the model's shape, and each one's size as sent."""

    pixels: np.ndarray  # uint8 [N, C, H, W]
    sizes: tuple[tuple[int, int], ...]  # (width, height) per image: an upload's own, an array's the model's

    @classmethod
    def at_model_size(cls, pixels: np.ndarray) -> Images:
        """Images sent in the model's shape (arrays): their size is the model's."""
        return cls(pixels, ((pixels.shape[3], pixels.shape[2]),) * len(pixels))


@dataclass(frozen=True)
class UploadLimits:
    """What one request's uploads may be (their defaults: :class:`service.settings.Settings`)."""

    max_images: int  # files per request
    max_file_bytes: int  # per file
    max_pixels: int  # one file, decoded (decompression bombs)
    max_request_pixels: int  # all files of one request together, decoded


def upload_pixels(upload: UploadFile, field: str, limits: UploadLimits) -> int:
    """One uploaded file's decoded size in pixels, read from its header alone (nothing is decoded)."""
    size = _size(upload.file)
    if size > limits.max_file_bytes:
        raise RequestError(field, f"file is {size:,} bytes; the limit is {limits.max_file_bytes:,}", 413)
    if size == 0:
        raise RequestError(field, "file is empty")
    upload.file.seek(0)
    with _readable(field), Image.open(upload.file) as image:
        width, height = image.size
    if width * height > limits.max_pixels:
        raise RequestError(field, f"image is {width}x{height}; the limit is {limits.max_pixels:,} pixels", 413)
    return width * height


def decode_upload(upload: UploadFile, field: str, shape: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """One uploaded file (header checked by :func:`upload_pixels`) -> (uint8 [C, H, W] in the model's shape, the
    file's own (width, height))."""
    upload.file.seek(0)
    with _readable(field), Image.open(upload.file) as image:
        image.load()
        return to_array(image, shape[0], shape[1]), image.size


@contextlib.contextmanager
def _readable(field: str) -> Iterator[None]:
    """Pillow's refusals of a file -> a 400 naming the field."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except UnidentifiedImageError:
        raise RequestError(field, "not an image Pillow can read (send PNG or JPEG)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise RequestError(field, f"broken or truncated image ({err})") from None


def check_image_source(files: Sequence[UploadFile] | None, array: Any) -> None:
    """Exactly one of ``images`` (uploads) or ``array`` (nested lists)."""
    if files and array is not None:
        raise RequestError("images", "send either image files or 'array', not both")
    if not files and array is None:
        raise RequestError("images", "no images: upload files as 'images' (multipart) or send 'array' (JSON)")


def images_from_uploads(
    files: Sequence[UploadFile], shape: tuple[int, int, int], limits: UploadLimits, stop: threading.Event | None = None
) -> Images:
    """Uploaded files -> uint8 [N, C, H, W] and their sizes as sent. Every header is checked, and the request's total
    pixels bounded, before anything is decoded; ``stop`` (set when the request is cancelled) ends the decoding between
    files."""
    if len(files) > limits.max_images:
        raise RequestError("images", f"{len(files)} images; the limit is {limits.max_images}", 413)
    total = sum(upload_pixels(upload, f"images[{i}]", limits) for i, upload in enumerate(files))
    if total > limits.max_request_pixels:
        raise RequestError(
            "images",
            f"the images hold {total:,} pixels together; the limit per request is {limits.max_request_pixels:,}",
            413,
        )
    decoded, sizes = [], []
    for i, upload in enumerate(files):
        if stop is not None and stop.is_set():
            raise RequestError("images", "the request was cancelled (timed out) while its images were decoded", 503)
        pixels, size = decode_upload(upload, f"images[{i}]", shape)
        decoded.append(pixels)
        sizes.append(size)
    return Images(np.stack(decoded), tuple(sizes))


def array_to_images(array: Any, field: str, shape: tuple[int, int, int], max_images: int) -> np.ndarray:
    """Nested lists of integer pixels 0..255, shaped [N, C, H, W] (or one [C, H, W] image)."""
    try:
        values = np.asarray(array, dtype=np.float64)
    except (ValueError, TypeError):
        raise RequestError(field, "must be a rectangular nested list of numbers") from None
    except OverflowError:  # an integer beyond float64's range is no pixel
        raise RequestError(field, "pixels must be integers 0..255 (uint8)", 422) from None
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
    except OverflowError:
        raise RequestError("z", "values beyond +-1e4 are not latents of a N(0, I) prior", 422) from None
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


def read_npy(upload: UploadFile, field: str, max_bytes: int) -> np.ndarray:
    """An uploaded .npy file -> its array; never unpickles, and reads the header first: a file whose header declares
    more data than it holds is refused before anything is allocated for it."""
    file = upload.file
    size = _size(file)
    if size > max_bytes:
        raise RequestError(field, f"file is {size:,} bytes; the limit is {max_bytes:,}", 413)
    try:
        file.seek(0)
        _refuse_images(file.read(8), field)
        file.seek(0)
        version = np.lib.format.read_magic(file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(file)
        declared = file.tell() + math.prod(shape) * dtype.itemsize
        if dtype.hasobject:
            raise ValueError("it holds Python objects (pickled data), which this service never loads")
        if declared != size:
            raise ValueError(
                f"its header declares shape {list(shape)} of {dtype} ({declared:,} bytes), the file has {size:,}"
            )
        file.seek(0)
        array: np.ndarray = np.load(file, allow_pickle=False)
        return array
    except (ValueError, OSError, EOFError) as err:
        raise RequestError(
            field, f"not a .npy file this service reads (save one array with numpy.save): {str(err)[:200]}"
        ) from None


IMAGE_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"BM": "a BMP image",
}


def _refuse_images(start: bytes, field: str) -> None:
    """An image file where a .npy array belongs: say so, and where images go."""
    for signature, kind in IMAGE_SIGNATURES.items():
        if start.startswith(signature):
            raise RequestError(
                field,
                f"this is {kind}, not a .npy file: the /batch routes take one array saved with numpy.save "
                "(image files go to /reconstruct and /anomaly-score)",
            )


def latents_from_npy(upload: UploadFile, field: str, latent_dim: int, max_images: int, max_bytes: int) -> np.ndarray:
    """A .npy of float latents [N, latent_dim] -> float32."""
    return latents_from_array(read_npy(upload, field, max_bytes), field, latent_dim, max_images)


def latents_from_array(array: np.ndarray, field: str, latent_dim: int, max_images: int) -> np.ndarray:
    """Numeric latents [N, latent_dim] (a .npy file's, a binary tensor's) -> float32, refusing NaN/inf."""
    if array.dtype.kind not in "fiu":
        raise RequestError(field, f"dtype {array.dtype} is not numeric; send float32 latents", 422)
    return _checked_latents(array.astype(np.float64), field, latent_dim, max_images)


def images_from_npy(
    upload: UploadFile, field: str, shape: tuple[int, int, int], max_images: int, max_bytes: int
) -> np.ndarray:
    """A .npy of uint8 images [N, C, H, W] (or one [C, H, W]) in the model's exact shape."""
    return images_from_array(read_npy(upload, field, max_bytes), field, shape, max_images)


def images_from_array(array: np.ndarray, field: str, shape: tuple[int, int, int], max_images: int) -> np.ndarray:
    """uint8 images [N, C, H, W] (or one [C, H, W]; a .npy file's, a binary tensor's) in the model's exact shape."""
    if array.dtype != np.uint8:
        raise RequestError(field, f"dtype {array.dtype}; send uint8 pixels 0..255", 422)
    return np.ascontiguousarray(_image_batch(array, field, shape, max_images))


def _image_batch(values: np.ndarray, field: str, shape: tuple[int, int, int], max_images: int) -> np.ndarray:
    """[N, C, H, W] in the model's exact shape (one [C, H, W] image becomes N = 1), at most ``max_images``."""
    if values.ndim == 3:
        values = values[None]
    if values.ndim != 4 or tuple(values.shape[1:]) != tuple(shape) or values.shape[0] == 0:
        raise RequestError(
            field, f"shape {list(values.shape)} does not match this model's [N, {', '.join(map(str, shape))}]", 422
        )
    if values.shape[0] > max_images:
        raise RequestError(field, f"{values.shape[0]} images; the limit is {max_images}", 413)
    return values


def labels_from_request(
    label: Any, n: int, classes: Sequence[str] | None, model: str, field: str = "label"
) -> np.ndarray | None:
    """A request's ``label`` (one class for all ``n`` images, or a list of ``n``) -> int64 [n] class indices;
    None when no label was sent. ``classes``: the model's class names, None for a model that is not conditional
    (which refuses any label)."""
    if label is None:
        return None
    classes = _conditional_classes(classes, model, field)
    if not isinstance(label, list):
        return np.full(n, class_index(label, classes, model, field), np.int64)
    if len(label) != n:
        raise RequestError(
            field, f"{len(label)} labels for {n} images; give one label for all of them or one per image", 422
        )
    return np.array([class_index(v, classes, model, f"{field}[{i}]") for i, v in enumerate(label)], np.int64)


def class_index(value: Any, classes: Sequence[str], model: str, field: str) -> int:
    """One class, given by name or index -> its index: a name wins over reading a digit string as an index."""
    if isinstance(value, str):
        if value in classes:
            return list(classes).index(value)
        if not (value.isascii() and value.isdigit()) or (value.startswith("0") and value != "0"):
            # an index is written in ASCII digits without leading zeros: "01" or "١" (Arabic-Indic one) is no class
            raise RequestError(field, f"unknown class {value[:100]!r}; {_classes_of(model, classes)}", 422)
        if len(value) > 18:  # no index is this long (and Python refuses int() of thousands of digits)
            raise _out_of_range(field, f"{value[:20]}...", classes, model)
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise RequestError(field, f"a class is a name or an index, not {type(value).__name__}", 422)
    if not 0 <= value < len(classes):
        raise _out_of_range(field, str(value), classes, model)
    return int(value)


def _out_of_range(field: str, index: str, classes: Sequence[str], model: str, low: int = 0) -> RequestError:
    unknown = " (-1: infer the class)" if low == -1 else ""
    return RequestError(
        field,
        f"class index {index} is out of range {low}..{len(classes) - 1}{unknown}; {_classes_of(model, classes)}",
        422,
    )


def labels_from_npy(
    upload: UploadFile,
    field: str,
    n: int,
    classes: Sequence[str] | None,
    model: str,
    max_bytes: int,
    unknown_allowed: bool = False,
) -> np.ndarray:
    """A .npy of integer class indices [n] -> int64; with ``unknown_allowed``, -1 marks an image whose class the
    model should infer (scoring only)."""
    _conditional_classes(classes, model, field)
    return labels_from_array(read_npy(upload, field, max_bytes), field, n, classes, model, unknown_allowed)


def labels_from_array(
    array: np.ndarray, field: str, n: int, classes: Sequence[str] | None, model: str, unknown_allowed: bool = False
) -> np.ndarray:
    """Integer class indices [n] (a .npy file's, a binary tensor's) -> int64; with ``unknown_allowed``, -1 marks an
    image whose class the model should infer (scoring only)."""
    classes = _conditional_classes(classes, model, field)
    if array.dtype.kind not in "iu":
        raise RequestError(field, f"dtype {array.dtype}; send integer class indices (int64)", 422)
    if array.shape != (n,):
        raise RequestError(field, f"shape {list(array.shape)} does not match [{n}], one label per row", 422)
    low = -1 if unknown_allowed else 0
    bad = np.flatnonzero((array < low) | (array >= len(classes)))
    if len(bad):
        raise _out_of_range(f"{field}[{bad[0]}]", str(array[bad[0]]), classes, model, low)
    return array.astype(np.int64)


def _conditional_classes(classes: Sequence[str] | None, model: str, field: str) -> Sequence[str]:
    if classes is None:
        raise RequestError(field, f"{model} is not a conditional model; it takes no class labels", 422)
    return classes


def _classes_of(model: str, classes: Sequence[str]) -> str:
    shown = ", ".join(classes[:CLASSES_SHOWN])
    more = f", ... ({len(classes)} in all; see /models)" if len(classes) > CLASSES_SHOWN else ""
    return f"{model}'s classes: {shown}{more}"


def _size(file: BinaryIO) -> int:
    """An uploaded file's size in bytes."""
    file.seek(0, 2)
    size = file.tell()
    file.seek(0)
    return size
