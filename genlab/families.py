"""The model families genlab knows, torch-free: the command line's choices come from here.

Each family's class in :mod:`genlab.models` registers under one of these names, and the
registry refuses a class whose name or ``has_encoder`` disagrees with this table, so the
two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    has_encoder: bool
    summary: str


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("vae", True, "variational autoencoder (Kingma & Welling 2013)"),
        Family(
            "gan",
            True,
            "GAN with the non-saturating loss (Goodfellow et al. 2014) and f-AnoGAN's encoder (Schlegl et al. 2019)",
        ),
        Family("vaegan", True, "VAE-GAN, Algorithm 1 of Larsen et al. 2016"),
    )
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)
