"""Anomaly scores fitted to the normal data: distances in a model's own spaces and the standardised primary score.

A family's ``score_parts`` gives, per image, scalar components ([B]) and vectors ([B, D]) in
the spaces it passes to ``GenerativeModel._init_scoring`` (its code, the discriminator's features).
After training, :func:`genlab.calibration.fit_to_training_data` fits, on normal images only:

- for each space, on the training images: the mean and a whitening matrix (Ledoit-Wolf
  shrinkage covariance; a per-dimension scale where the space is too wide for a full matrix),
  so that ``<space>_distance`` is the squared Mahalanobis distance divided by the dimension
  (about 1 for a typical normal image);
- on held-out normal images: the mean and standard deviation of each component that the primary
  score combines, so that ``score`` is the mean of those components in standard units;
- with a local anomaly map (:mod:`genlab.models.local_map`): its per-pixel statistics on the training images and
  its pixel scale on the held-out images;
- on the training and held-out normal images: a contrast floor, half the smallest contrast (standard deviation
  of an image's pixels, :func:`image_contrast`) among them. ``low_contrast`` is how far an image falls below
  it, as a share of the floor (0 at or above it, 1 for a constant image). Below the floor the primary score is
  at least ``LOW_CONTRAST_WEIGHT`` standard units per unit of it (:meth:`ScoreFit.combine`): a blank, saturated
  or uniformly grey frame (a dead camera, an empty upload) scores far above any threshold, even where its pixel
  errors are tiny, while images as varied as the normal ones are scored exactly as without the guard.

Everything fitted lives in non-persistent buffers (old checkpoints still load; one without a contrast floor
scores without the guard) and is saved in the checkpoint's ``score_fit``; it is traced into ``score.onnx`` as
constants.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from genlab.models.local_map import LocalMap
from genlab.pixels import model_to_uint8

FULL_COVARIANCE_MAX_DIM = 512  # wider spaces get a per-dimension (diagonal) scale
MIN_STD = 1e-9  # a spread below this (or below 1e-6 of the values' size) counts as constant
LOW_CONTRAST = "low_contrast"  # the score component of the contrast guard
LOW_CONTRAST_WEIGHT = 100.0  # standard units a constant image's primary score has at least
LOW_CONTRAST_MEANING = (
    "how far the image's contrast (standard deviation of its pixels in [0, 1]) falls below half the smallest "
    "contrast among the normal training and held-out images, as a share of that floor: 0 at or above it, 1 for a "
    f"constant image; below the floor the primary score is max(0, its standardised mean) + {LOW_CONTRAST_WEIGHT:g} "
    "per unit"
)
CONTRAST_FLOOR_FRACTION = 0.5  # the floor, as a fraction of the smallest contrast of a normal image
OPTIONAL_BUFFERS = ("contrast_floor",)  # absent from checkpoints fitted without the guard: it stays off (floor 0)


def image_contrast(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> the standard deviation of each image's uint8 pixels scaled to [0, 1], over every pixel
    and channel, float64 [B]: 0 for a constant image (black, white or any grey)."""
    pixels = model_to_uint8(x).double().flatten(1) / 255.0
    return (pixels - pixels.mean(dim=1, keepdim=True)).pow(2).mean(dim=1).sqrt()


class ScoreFit(nn.Module):
    """The fitted statistics: per space a mean and whitening (matrix or per-dimension scale), per primary component
    a mean and standard deviation, and the contrast floor. Unfitted, it is the identity (mean 0, unit scale) and the
    guard is off (floor 0)."""

    def __init__(self, spaces: dict[str, int], primary: tuple[str, ...], local: LocalMap | None = None):
        super().__init__()
        self.spaces = dict(spaces)
        self.primary = tuple(primary)
        self.local = local  # an inspection model's local anomaly map (its buffers are fitted here too)
        for name, dim in self.spaces.items():
            whiten = torch.eye(dim) if dim <= FULL_COVARIANCE_MAX_DIM else torch.ones(dim)
            self.register_buffer(f"{name}_mean", torch.zeros(dim), persistent=False)
            self.register_buffer(f"{name}_whiten", whiten, persistent=False)
        self.register_buffer("primary_mean", torch.zeros(len(self.primary)), persistent=False)
        self.register_buffer("primary_std", torch.ones(len(self.primary)), persistent=False)
        self.register_buffer("contrast_floor", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool), persistent=False)

    def distance(self, space: str, v: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of each row of ``v`` [B, D] from the space's normal mean, divided by D: [B]."""
        centred = v - getattr(self, f"{space}_mean")
        whiten = getattr(self, f"{space}_whiten")
        white = centred @ whiten if whiten.dim() == 2 else centred * whiten
        return white.pow(2).mean(dim=1)

    def low_contrast(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> :data:`LOW_CONTRAST_MEANING`, float64 [B]; 0 for every image while unfitted."""
        floor = self.contrast_floor.double()
        return (floor - image_contrast(x)).clamp_min(0.0) / floor.clamp_min(MIN_STD)

    def combine(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        """The primary score: the mean of the primary components, each in standard units of held-out normal images;
        for an image below the contrast floor, that mean floored at 0 plus ``LOW_CONTRAST_WEIGHT`` times
        ``low_contrast``. So the guard never lowers a score, leaves images as varied as the normal ones as they are,
        and puts a constant image at ``LOW_CONTRAST_WEIGHT`` or more, however well it is reconstructed."""
        stacked = torch.stack([components[name].double() for name in self.primary], dim=1)
        standard = ((stacked - self.primary_mean.double()) / self.primary_std.double()).mean(dim=1)
        low = components[LOW_CONTRAST].double()
        return torch.where(low > 0, standard.clamp_min(0.0) + LOW_CONTRAST_WEIGHT * low, standard)

    # -- fitting (numpy / scikit-learn, once after training) -----------------------------------
    @torch.no_grad()
    def fit_space(self, space: str, vectors: torch.Tensor) -> None:
        from sklearn.covariance import LedoitWolf

        v = vectors.double().cpu().numpy()
        mean = v.mean(axis=0)
        if getattr(self, f"{space}_whiten").dim() == 2:
            precision = LedoitWolf().fit(v).precision_
            whiten = np.linalg.cholesky((precision + precision.T) / 2.0)  # P = L L^T, so |x L|^2 = x P x^T
        else:
            std = v.std(
                axis=0
            )  # features that hardly vary on normal images must not dominate: floor at 1% of the typical spread
            whiten = 1.0 / np.maximum(std, max(MIN_STD, 1e-2 * float(std.mean())))
        getattr(self, f"{space}_mean").copy_(torch.from_numpy(mean))
        getattr(self, f"{space}_whiten").copy_(torch.from_numpy(whiten))

    @torch.no_grad()
    def fit_contrast(self, contrasts: torch.Tensor) -> None:
        """The floor from the contrasts (:func:`image_contrast`) of normal images: CONTRAST_FLOOR_FRACTION of the
        smallest. Normal images that include a constant one give floor 0: the guard stays off."""
        self.contrast_floor.fill_(CONTRAST_FLOOR_FRACTION * float(contrasts.double().min()))

    @torch.no_grad()
    def fit_primary(self, components: dict[str, torch.Tensor]) -> None:
        values = torch.stack([components[name].double() for name in self.primary], dim=1)
        self.primary_mean.copy_(values.mean(dim=0))
        floor = (values.mean(dim=0).abs() * 1e-6).clamp_min(MIN_STD)
        spread = values.std(dim=0) if len(values) > 1 else torch.zeros_like(floor)  # one image has no spread
        self.primary_std.copy_(torch.maximum(spread, floor))
        self.fitted.fill_(True)

    def state(self) -> dict[str, Any]:
        """The buffers, and the primary components they standardise (so a fit for other scores is refused)."""
        return {
            "primary_components": list(self.primary),
            **{name: buf.detach().cpu().clone() for name, buf in self.named_buffers()},
        }

    def load(self, state: dict[str, Any]) -> None:
        state = dict(state)
        primary = state.pop("primary_components", None)
        if primary != list(self.primary):
            raise ValueError(f"fitted for primary components {primary}, this genlab combines {list(self.primary)}")
        own = dict(self.named_buffers())
        if not set(own) - set(OPTIONAL_BUFFERS) <= set(state) <= set(own):
            raise ValueError(f"score fit has {sorted(state)}, expected {sorted(own)}")
        for name in set(OPTIONAL_BUFFERS) - set(state):
            own[name].zero_()
        for name, value in state.items():
            if value.shape != own[name].shape:
                raise ValueError(f"score fit {name} has shape {tuple(value.shape)}, expected {tuple(own[name].shape)}")
            own[name].copy_(value)
