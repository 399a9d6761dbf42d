"""Anomaly maps at the model's size -> the answers of /anomaly-score, at the model's size or over each image as sent.

The model saw an upload's centre square, resized (:func:`genlab.imageio.to_array`). With ``maps_size=image`` its map
goes back the same way: upsampled (bilinear, on the float values) to the square's side in the upload's pixels and
placed where the square was on a canvas of the upload's width x height, zero outside the square. Map pixel (row, col)
is then the upload's pixel (row, col). An image sent in the model's shape (an ``array``) is its own square, so its map
is the model's either way.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genlab.imageio import centre_square_box, encode_png, resize_map
from genlab.web import RequestError

# maps_format=array with maps_size=image: the most floats the maps of one request may hold together (about 16 MB of
# JSON; a 900 x 700 RGB photo's map holds 1.9 million). PNG maps are bounded by the upload limits alone.
MAX_ARRAY_MAP_VALUES = 1 << 21


@dataclass(frozen=True)
class MapAnswer:
    """One image's anomaly map as answered."""

    anomaly_map: str | list[Any]  # a base64 PNG of uint8 rint(255 x value), or float [C, H, W]
    size: tuple[int, int]  # (H, W)


def check_array_map_values(channels: int, sizes: Sequence[tuple[int, int]]) -> None:
    """Refuse float maps (``maps_format=array``) of images as sent (``sizes``, (width, height) each) whose
    ``channels`` x pixels, all images together, pass :data:`MAX_ARRAY_MAP_VALUES`."""
    values = channels * sum(width * height for width, height in sizes)
    if values > MAX_ARRAY_MAP_VALUES:
        raise RequestError(
            "maps_size",
            f"the maps at the images' own size would hold {values:,} floats; maps_format=array holds at most "
            f"{MAX_ARRAY_MAP_VALUES:,} per request (ask for maps_format=png, or maps_size=model)",
            413,
        )


def maps_to_answers(maps: np.ndarray, sizes: Sequence[tuple[int, int]], maps_format: str) -> list[MapAnswer]:
    """float maps [N, C, s, s] at the model's size -> each laid over its image's (width, height) in ``sizes``, as a
    base64 PNG (``maps_format=png``) or floats rounded to 5 decimals (``array``)."""
    answers = []
    for anomaly_map, size in zip(maps, sizes, strict=True):
        if maps_format == "png":
            pixels = map_over_image(anomaly_map, size, quantized=True)
            value: str | list[Any] = base64.b64encode(encode_png(pixels.transpose(1, 2, 0))).decode()
        else:
            pixels = map_over_image(anomaly_map, size)
            value = pixels.round(5).tolist()
        answers.append(MapAnswer(value, (pixels.shape[1], pixels.shape[2])))
    return answers


def map_over_image(anomaly_map: np.ndarray, size: tuple[int, int], quantized: bool = False) -> np.ndarray:
    """One map [C, s, s] at the model's size -> [C, height, width] over an image of ``size`` = (width, height):
    float32, or with ``quantized`` uint8 rint(255 x value). It is made channel by channel, so that a large image's
    map is never held whole as floats when it is quantized."""
    width, height = size
    left, top, side = centre_square_box(width, height)
    canvas = np.zeros((anomaly_map.shape[0], height, width), np.uint8 if quantized else np.float32)
    for c, channel in enumerate(anomaly_map):
        square = resize_map(channel, side, side)
        canvas[c, top : top + side, left : left + side] = (
            np.clip(np.rint(square * 255), 0, 255) if quantized else square
        )
    return canvas
