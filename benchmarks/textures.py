"""A folder of generated texture images at one size, for benchmarks that need real image sizes without a download.

Each image is a seeded mix of a smooth random field (an 8x8 grid of random values, upsampled bicubically), one
sinusoidal grating of random frequency, orientation and phase, and fine pixel noise; in colour, each channel
mixes the three with its own weights. Nothing depends on anything but ``(size, channels, count, seed)``, so the
same arguments write the same bytes. Read the folder with ``--dataset folder:PATH`` (genlab.data); it holds
PNG files only, directly under PATH (one class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

FIELD_GRID = 8  # the smooth field's random values per side before upsampling


def texture_array(size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """One texture: uint8 [size, size] (channels 1) or [size, size, 3]."""
    field = np.stack(
        [
            np.asarray(
                Image.fromarray(rng.random((FIELD_GRID, FIELD_GRID)).astype(np.float32)).resize(
                    (size, size), Image.Resampling.BICUBIC
                )
            )
            for _ in range(channels)
        ]
    )
    cycles = rng.uniform(2.0, max(3.0, size / 8))  # periods across the image
    angle, phase = rng.uniform(0.0, np.pi), rng.uniform(0.0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / size
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * cycles * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    weights = rng.dirichlet((2.0, 2.0, 1.0), size=channels)  # field, grating, noise per channel
    noise = rng.random((channels, size, size))
    image = weights[:, 0, None, None] * field + weights[:, 1, None, None] * grating + weights[:, 2, None, None] * noise
    image = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    return image[0] if channels == 1 else image.transpose(1, 2, 0)


def write_textures(folder: Path, size: int, channels: int, count: int, seed: int = 0) -> Path:
    """``count`` textures of ``channels`` x ``size`` x ``size`` as ``folder/NNNNN.png``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng((seed, size, channels))
    for i in range(count):
        Image.fromarray(texture_array(size, channels, rng)).save(folder / f"{i:05d}.png")
    return folder
