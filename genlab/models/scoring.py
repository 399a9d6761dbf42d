"""Anomaly scores fitted to the normal data: distances in a model's own spaces and the standardised primary score.

A family's ``score_parts`` gives, per image, scalar components ([B]) and vectors ([B, D]) in
the spaces it passes to ``GenerativeModel._init_scoring`` (its code, the discriminator's features).
After training, :func:`genlab.calibration.fit_to_training_data` fits, on normal images only:

- for each space, on the training images: the mean and a whitening matrix (Ledoit-Wolf
  shrinkage covariance; a per-dimension scale where the space is too wide for a full matrix),
  so that ``<space>_distance`` is the squared Mahalanobis distance divided by the dimension
  (about 1 for a typical normal image);
- on held-out normal images: the mean and standard deviation of each component that the primary
  score combines, so that ``score`` is the mean of those components in standard units.

Everything fitted lives in non-persistent buffers (old checkpoints still load) and is saved in the
checkpoint's ``score_fit``; it is traced into ``score.onnx`` as constants.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

FULL_COVARIANCE_MAX_DIM = 512  # wider spaces get a per-dimension (diagonal) scale
MIN_STD = 1e-9  # a spread below this (or below 1e-6 of the values' size) counts as constant


class ScoreFit(nn.Module):
    """The fitted statistics: per space a mean and whitening (matrix or per-dimension scale), per primary component
    a mean and standard deviation. Unfitted, it is the identity (mean 0, unit scale)."""

    def __init__(self, spaces: dict[str, int], primary: tuple[str, ...]):
        super().__init__()
        self.spaces = dict(spaces)
        self.primary = tuple(primary)
        for name, dim in self.spaces.items():
            whiten = torch.eye(dim) if dim <= FULL_COVARIANCE_MAX_DIM else torch.ones(dim)
            self.register_buffer(f"{name}_mean", torch.zeros(dim), persistent=False)
            self.register_buffer(f"{name}_whiten", whiten, persistent=False)
        self.register_buffer("primary_mean", torch.zeros(len(self.primary)), persistent=False)
        self.register_buffer("primary_std", torch.ones(len(self.primary)), persistent=False)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool), persistent=False)

    def distance(self, space: str, v: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of each row of ``v`` [B, D] from the space's normal mean, divided by D: [B]."""
        centred = v - getattr(self, f"{space}_mean")
        whiten = getattr(self, f"{space}_whiten")
        white = centred @ whiten if whiten.dim() == 2 else centred * whiten
        return white.pow(2).mean(dim=1)

    def combine(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        """The primary score: the mean of the primary components, each in standard units of held-out normal images."""
        stacked = torch.stack([components[name].double() for name in self.primary], dim=1)
        return ((stacked - self.primary_mean.double()) / self.primary_std.double()).mean(dim=1)

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
    def fit_primary(self, components: dict[str, torch.Tensor]) -> None:
        values = torch.stack([components[name].double() for name in self.primary], dim=1)
        self.primary_mean.copy_(values.mean(dim=0))
        floor = (values.mean(dim=0).abs() * 1e-6).clamp_min(MIN_STD)
        self.primary_std.copy_(torch.maximum(values.std(dim=0), floor))
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
        if set(state) != set(own):
            raise ValueError(f"score fit has {sorted(state)}, expected {sorted(own)}")
        for name, value in state.items():
            if value.shape != own[name].shape:
                raise ValueError(f"score fit {name} has shape {tuple(value.shape)}, expected {tuple(own[name].shape)}")
            own[name].copy_(value)
