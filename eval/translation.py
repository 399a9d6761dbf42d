"""The translation experiment: reconstruction error of held-out images shifted by 0..10%.

Each image is shifted by a fixed distance (a fraction of the image size) in a seeded random
direction, rounded to whole pixels, edge pixels repeated; the encoder model reconstructs the
shifted image and the error is ``recon_error`` (:mod:`genlab.measures`). Shift 0 is the
plain reconstruction error. Only encoder models (VAE, VAE-GAN) reconstruct.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from genlab.errors import GenlabError
from genlab.measures import RECON_ERROR, recon_error

SHIFTS = (0.0, 0.025, 0.05, 0.075, 0.1)


@dataclass(frozen=True)
class TranslationSettings:
    dataset: str
    split: str = "test"
    data_dir: str = "data"
    fractions: tuple[float, ...] = SHIFTS
    n: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.fractions or any(not 0.0 <= f < 0.5 for f in self.fractions):
            raise GenlabError(f"shift fractions must be within [0, 0.5), got {list(self.fractions)}")
        if self.n < 1:
            raise GenlabError(f"n must be >= 1, got {self.n}")


def shift_by_fraction(images: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, float]:
    """Shift each image by ``fraction`` of its size in a seeded random direction.

    Returns the shifted images and the mean shift actually applied, in pixels (offsets are
    rounded to whole pixels).
    """
    from genlab.pixels import translate

    n, _, h, _ = images.shape
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=g, dtype=torch.float64) * (2 * np.pi)
    dy = torch.round(fraction * h * torch.sin(angle)).to(torch.int64)
    dx = torch.round(fraction * h * torch.cos(angle)).to(torch.int64)
    applied = torch.sqrt((dy**2 + dx**2).to(torch.float64)).mean().item()
    return translate(images, dy, dx), float(applied)


def evaluate_translation(
    model: Any,
    dataset: str | None = None,
    split: str = "test",
    data_dir: str = "data",
    fractions: tuple[float, ...] = SHIFTS,
    n: int = 500,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Reconstruction error per shift for an encoder model (checkpoint, run dir, export dir or ModelSource).

    ``n`` held-out images are drawn (seeded) from ``dataset`` (default: the model's own);
    the same images and directions are used at every shift.
    """
    from genlab.eval.model_source import ensure_source

    from genlab.data import load_split

    source = ensure_source(model)
    if not source.has_encoder:
        raise GenlabError(f"the translation experiment needs a model with an encoder; this {source.family} has none")
    settings = TranslationSettings(
        dataset or source.dataset, split, data_dir, tuple(float(f) for f in fractions), int(n), int(seed)
    )
    channels, size, _ = tuple(source.image_shape)
    own_labels = getattr(source, "conditional", False) and settings.dataset == source.dataset
    data = load_split(
        settings.dataset,
        split,
        data_dir,
        image_size=size,
        channels=channels,
        condition_on=source.condition_on if own_labels else None,
    )
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[: settings.n].sort().values
    images = data.images[pick]
    # a conditional model reconstructs its own dataset's images through their labels (elsewhere: its best class)
    labels = data.labels[pick].numpy() if own_labels else None
    rows = [_shifted_error(source, images, labels, fraction, seed, batch_size) for fraction in settings.fractions]
    base = rows[0][RECON_ERROR] if settings.fractions[0] == 0.0 else None
    return {
        "evaluation": "translation",
        "settings": {**dataclasses.asdict(settings), "fractions": list(settings.fractions), "n": len(images)},
        "model": dict(source.info),
        "shifts": rows,
        RECON_ERROR: base,
        "worst_over_unshifted": (rows[-1][RECON_ERROR] / base) if base else None,  # None when no shift 0 or it is exact
    }


def _shifted_error(source: Any, images: torch.Tensor, labels: Any, fraction: float, seed: int, batch_size: int) -> dict:
    shifted, pixels = shift_by_fraction(images, fraction, seed)
    shifted = shifted.numpy()
    reconstructed = source.reconstruct(shifted, labels=labels, batch_size=batch_size, desc="reconstructing")
    error = recon_error(shifted, reconstructed)
    return {
        "fraction": fraction,
        "mean_shift_pixels": pixels,
        RECON_ERROR: float(error.mean()),
        f"{RECON_ERROR}_std": float(error.std()),
    }


def result_name(result: dict[str, Any]) -> str:
    s = result["settings"]
    shifts = "-".join(f"{f:g}" for f in s["fractions"])
    return f"translation-{s['dataset']}-{s['split']}-n{s['n']}-seed{s['seed']}-shifts{shifts}"


def summary_line(result: dict[str, Any]) -> str:
    parts = ", ".join(
        f"{r['fraction']:.1%} ({r['mean_shift_pixels']:.1f} px): {r[RECON_ERROR]:.5f}" for r in result["shifts"]
    )
    s = result["settings"]
    return f"{RECON_ERROR} by shift on {s['dataset']}:{s['split']} (n={s['n']}): {parts}"
