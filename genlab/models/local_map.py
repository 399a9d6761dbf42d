"""The local anomaly map of an inspection model: where an image departs from what normal images have at each place.

A reconstruction error alone misses what a blurry reconstruction cannot tell apart: a smeared or smoothed patch
looks like the reconstruction itself, so its error is small (on the inspection benchmark's smears, image AUROC
near chance). Two measurements per pixel, each standardised by the mean and standard deviation that the normal
training images have at that pixel, see both:

- ``error``: the reconstruction error, |image - reconstruction| averaged over channels, in [0, 1] pixel units.
  Only an error above the usual one counts (a part the model always reconstructs badly, an edge or a joint, is
  usual there).
- ``detail``: the log energy of the image's luminance in two band-pass bands (fine: the image minus its Gaussian
  blur at 1 px; medium: the blur at 1 px minus the blur at 2 px), each averaged over a Gaussian window. A smear
  or a flat spot has less detail than the normal texture there, a scratch or a crack more; both count.

The map is the mean of the three squared standard deviations (a diagonal Mahalanobis distance, the error's
one-sided), smoothed by a Gaussian of ``image_size / 32`` px, and divided by its 99.9th percentile over the
pixels of held-out normal images, so 1 is as unusual as the most unusual 0.1% of normal pixels.
``local_deviation``, the image's score, is the map's largest value; ``display`` squashes the map into [0, 1]
(``m / (1 + m)``: 0.5 is that 99.9th percentile), which is what ``score.onnx``'s ``anomaly_map`` returns and a
PNG map shows. Everything is fitted on normal images only (:func:`genlab.calibration.fit_to_training_data`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

LOCAL_DEVIATION = "local_deviation"
LOCAL_DEVIATION_MEANING = (
    "the largest value of the image's local anomaly map: at each pixel, the reconstruction error above what normal "
    "training images have there, and the fine and medium detail of the image against theirs, in standard units "
    "squared and averaged, smoothed, in units of the 99.9th percentile of held-out normal images' pixels"
)
LOCAL_MAP_MEANING = (
    "per pixel: m / (1 + m), m the local deviation from normal images (reconstruction error above the usual and "
    "fine/medium detail unlike the usual at that place, smoothed), in units of the 99.9th percentile of held-out "
    "normal images' pixels: 0.5 is as unusual as the most unusual 0.1% of normal pixels"
)
BANDS = (1.0, 2.0)  # Gaussian blurs (px) that bound the fine and medium band-pass bands
ENERGY_WINDOW = 2.0  # px: the Gaussian window a band's energy is averaged over (doubled for the medium band)
ENERGY_FLOOR = 1e-5  # added to the band energy before the log: below it (a flat patch) detail reads as absent
STD_FLOOR_SHARE = 0.5  # a pixel's standard deviation is at least this share of the median pixel's
PIXEL_QUANTILE = 0.999  # the held-out normal pixels' quantile that the map is divided by
CHANNELS = 3  # error, fine detail, medium detail


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """[B, C, H, W] -> the same, each channel blurred by a separable Gaussian of ``sigma`` px, reflected at the
    borders (the kernel reaches at most ``3 sigma`` and never past the image's side)."""
    radius = min(max(1, round(3 * sigma)), min(x.shape[-2:]) - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def measurements(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Images and reconstructions in [-1, 1] [B, C, H, W] -> [B, 3, H, W]: the reconstruction error and the log
    energy of the image's fine and medium detail (module docstring)."""
    error = (x - x_rec).abs().mean(dim=1, keepdim=True) / 2.0
    luminance = (x.mean(dim=1, keepdim=True) + 1.0) / 2.0
    fine_blur, medium_blur = (gaussian_blur(luminance, s) for s in BANDS)
    fine, medium = luminance - fine_blur, fine_blur - medium_blur
    energy = [gaussian_blur(fine.pow(2), ENERGY_WINDOW), gaussian_blur(medium.pow(2), 2 * ENERGY_WINDOW)]
    return torch.cat([error, *(torch.log(e + ENERGY_FLOOR) for e in energy)], dim=1)


class LocalMap(nn.Module):
    """Per-pixel means and standard deviations of :func:`measurements` on normal images, and the pixel scale.
    Unfitted: mean 0, standard deviation 1, scale 1."""

    def __init__(self, image_size: int):
        super().__init__()
        self.smoothing = image_size / 32.0
        shape = (CHANNELS, image_size, image_size)
        self.register_buffer("local_mean", torch.zeros(shape), persistent=False)
        self.register_buffer("local_std", torch.ones(shape), persistent=False)
        self.register_buffer("local_scale", torch.ones(()), persistent=False)

    def raw(self, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] images and reconstructions in [-1, 1] -> the unscaled map [B, 1, H, W]."""
        z = (measurements(x, x_rec) - self.local_mean) / self.local_std
        z = torch.cat([z[:, :1].clamp_min(0.0), z[:, 1:]], dim=1)  # an error below the usual is not a deviation
        return gaussian_blur(z.pow(2).mean(dim=1, keepdim=True), self.smoothing)

    def forward(self, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
        """The map [B, 1, H, W], 1 = the 99.9th percentile of held-out normal pixels."""
        return self.raw(x, x_rec) / self.local_scale

    def score(self, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
        """:data:`LOCAL_DEVIATION_MEANING`, per image [B]."""
        return self(x, x_rec).flatten(1).amax(dim=1)

    def display(self, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
        """:data:`LOCAL_MAP_MEANING`, float32 [B, 1, H, W] in [0, 1)."""
        m = self(x, x_rec)
        return (m / (1.0 + m)).to(torch.float32)

    # -- fitting (once after training, normal images only) -------------------------------------------
    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor]) -> None:
        """Per-pixel statistics from the :func:`measurements` of normal training images, given batch by batch
        ([n, 3, H, W] each); each channel's standard deviation floored at ``STD_FLOOR_SHARE`` of its median
        pixel's."""
        count, total, squares = 0, 0.0, 0.0
        for measured in batches:
            values = measured.double()
            count += len(values)
            total = total + values.sum(dim=0)
            squares = squares + values.pow(2).sum(dim=0)
        if count == 0:
            raise ValueError("a local map needs at least one normal image to fit")
        mean = torch.as_tensor(total) / count
        if count > 1:
            std = ((torch.as_tensor(squares) - count * mean.pow(2)) / (count - 1)).clamp_min(0.0).sqrt()
        else:
            std = torch.ones_like(mean)
        floor = STD_FLOOR_SHARE * std.flatten(1).median(dim=1).values.clamp_min(1e-6)
        self.local_mean.copy_(mean)
        self.local_std.copy_(torch.maximum(std, floor.view(-1, 1, 1)))

    @torch.no_grad()
    def fit_scale(self, raw_maps: torch.Tensor) -> None:
        """The pixel scale from the :meth:`raw` maps of held-out normal images: their ``PIXEL_QUANTILE``."""
        values = raw_maps.flatten().double()
        if values.numel() > 1 << 24:  # torch.quantile's input limit: an evenly spaced subset
            values = values[:: -(-values.numel() // (1 << 24))]
        self.local_scale.fill_(max(float(torch.quantile(values, PIXEL_QUANTILE)), 1e-6))
