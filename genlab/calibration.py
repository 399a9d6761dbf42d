"""Anomaly fitting and calibration, on normal images only.

:func:`fit_to_training_data` fits the statistics of the fitted score components
(:mod:`genlab.models.scoring`: the spaces on the training images, the primary score's
standardisation on held-out images) and the latent prior (:mod:`genlab.latents`), then
:func:`calibrate` records the distribution of each score on held-out normal images. The
checkpoint keeps each score component's quantiles on a 0.1-percentile grid, so a later
consumer (the service) turns a raw score into its percentile among normal images and uses
a percentile (default 99) as the anomaly threshold; :mod:`genlab.thresholds` reads it back.

A conditional model is fitted with each normal image's own label, and calibrated as the service scores
an image sent without a label: under the class that explains it best (``GenerativeModel.labelled_scores``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from genlab.data import ImageData
from genlab.latents import fit_class_mixtures, fit_prior
from genlab.models import GenerativeModel
from genlab.models.base import RECONSTRUCTION
from genlab.models.local_map import measurements
from genlab.models.scoring import image_contrast
from genlab.pixels import uint8_to_model
from genlab.thresholds import calibration_check

PERCENTILES = [round(0.1 * i, 1) for i in range(1001)]


@torch.no_grad()
def score_images(
    model: GenerativeModel,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    parts: bool = False,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """uint8 images -> {component: [N] scores} in eval mode (``parts``: the unfitted ``score_parts``). A conditional
    model scores each image under its ``labels`` (where given) and adds ``label``, the class it was scored under."""
    was_training = model.training
    model.eval()
    score = model.score_parts if parts else model.anomaly_scores
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        x = uint8_to_model(images[start : start + batch_size].to(device))
        y = None if labels is None or not model.conditional else labels[start : start + batch_size].to(device)
        for name, value in score(x, y).items():
            if name != RECONSTRUCTION:  # images, not scores (fit_local_map takes them batch by batch)
                out.setdefault(name, []).append(value.cpu() if name == "label" else value.float().cpu())
    model.train(was_training)
    return {name: torch.cat(values) for name, values in out.items()}


def contrasts(images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """uint8 images -> each one's contrast (:func:`genlab.models.scoring.image_contrast`), float64 [N]."""
    return torch.cat(
        [image_contrast(uint8_to_model(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    )


def _reconstructed(
    model: GenerativeModel, data: ImageData, device: torch.device, batch_size: int = 64
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, reconstructions) in [-1, 1], batch by batch, in eval mode (a conditional model's under each image's
    label), so that no split's reconstructions are held whole."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = uint8_to_model(data.images[start : start + batch_size].to(device))
            y = data.labels[start : start + batch_size].to(device) if model.conditional else None
            yield x, model.reconstruct(x, y)
    model.train(was_training)


def fit_local_map(model: GenerativeModel, train: ImageData, held_out: ImageData, device: torch.device) -> None:
    """A local anomaly map's per-pixel statistics on the training images and its pixel scale on the held-out ones
    (:class:`genlab.models.local_map.LocalMap`)."""
    local = model.score_fit.local
    if local is None:
        return
    local.fit(measurements(x, x_rec) for x, x_rec in _reconstructed(model, train, device))
    with torch.no_grad():
        local.fit_scale(torch.cat([local.raw(x, x_rec).cpu() for x, x_rec in _reconstructed(model, held_out, device)]))


def fit_to_training_data(
    model: GenerativeModel, train: ImageData, held_out: ImageData, device: torch.device, seed: int
) -> dict[str, Any]:
    """After training, on normal images only (never on anomalies): the score statistics (``score_fit``: the spaces
    on the training images, the contrast floor on the training and held-out images, the primary score's
    standardisation on the held-out images), the latent prior fitted to the training codes of a family with an
    encoder (``prior``, :mod:`genlab.latents`), and the calibration on the held-out images (``calibration``); each
    goes into the checkpoint under its key."""
    parts = score_images(model, train.images, device, parts=True, labels=train.labels)
    for space in model.score_fit.spaces:
        model.score_fit.fit_space(space, parts[space])
    fit_local_map(model, train, held_out, device)
    model.score_fit.fit_contrast(torch.cat([contrasts(train.images), contrasts(held_out.images)]))
    model.score_fit.fit_primary(score_images(model, held_out.images, device, labels=held_out.labels))
    prior = None
    if model.has_encoder and model.conditional:  # the "latent" part is the posterior mean
        prior = fit_class_mixtures(
            parts["latent"].numpy(),
            train.labels.numpy(),
            model.num_classes,
            seed,
            f"posterior means of the {len(train)} training images, per class",
        )
    elif model.has_encoder:
        held_out_codes = score_images(model, held_out.images, device, parts=True)["latent"].numpy()
        prior = fit_prior(
            parts["latent"].numpy(),
            train.labels.numpy(),
            held_out_codes,
            seed,
            f"posterior means of the {len(train)} training images",
        )
    return {
        "score_fit": model.score_fit.state(),
        "prior": prior,
        "calibration": calibrate(model, held_out.images, device, split="val"),
    }


def calibrate(model: GenerativeModel, images: torch.Tensor, device: torch.device, split: str) -> dict[str, Any]:
    scores = score_images(model, images, device)
    scores.pop("label", None)
    grid = torch.tensor(PERCENTILES, dtype=torch.float64) / 100.0
    return {
        "split": split,
        "n": len(images),
        "check": calibration_check(scores["score"].numpy()),
        "percentiles": PERCENTILES,
        "scores": {name: torch.quantile(v.double(), grid).tolist() for name, v in scores.items()},
        "descriptions": model.descriptions(),
    }
