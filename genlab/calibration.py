"""Anomaly calibration: the distribution of each score on held-out normal images.

The checkpoint keeps each score component's quantiles on a 0.1-percentile grid, so a later
consumer (the service) turns a raw score into its percentile among normal images and uses
a percentile (default 99) as the anomaly threshold; :mod:`genlab.thresholds` reads it back.
"""

from __future__ import annotations

from typing import Any

import torch

from genlab.models import GenerativeModel
from genlab.pixels import uint8_to_model

PERCENTILES = [round(0.1 * i, 1) for i in range(1001)]


@torch.no_grad()
def score_images(model: GenerativeModel, images: torch.Tensor, device: torch.device, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """uint8 images -> {component: [N] scores} in eval mode."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        x = uint8_to_model(images[start : start + batch_size].to(device))
        for name, value in model.anomaly_scores(x).items():
            parts.setdefault(name, []).append(value.float().cpu())
    model.train(was_training)
    return {name: torch.cat(values) for name, values in parts.items()}


def calibrate(model: GenerativeModel, images: torch.Tensor, device: torch.device, split: str) -> dict[str, Any]:
    scores = score_images(model, images, device)
    grid = torch.tensor(PERCENTILES, dtype=torch.float64) / 100.0
    return {
        "split": split,
        "n": len(images),
        "percentiles": PERCENTILES,
        "scores": {name: torch.quantile(v.double(), grid).tolist() for name, v in scores.items()},
        "descriptions": dict(type(model).score_descriptions),
    }

