"""Torch-free reading of anomaly calibration: raw score <-> percentile among normal images.

A calibration (written at the end of training, copied into every export's manifest) holds,
for each score component, its quantiles over held-out normal images on the grid
``percentiles`` (0, 0.1, ..., 100). Both directions interpolate linearly on that grid, so
``percentile_of(cal, name, quantile(cal, name, p)) == p`` wherever the quantiles increase.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genlab.errors import GenlabError

DEFAULT_PERCENTILE = 99.0


def _curve(calibration: dict[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    scores = calibration.get("scores", {})
    if name not in scores:
        raise GenlabError(
            f"no calibration for score {name!r}; calibrated scores: {', '.join(sorted(scores)) or 'none'}"
        )
    return np.asarray(calibration["percentiles"], np.float64), np.asarray(scores[name], np.float64)


def quantile(calibration: dict[str, Any], name: str, percentile: float) -> float:
    """The raw score at ``percentile`` (0-100) of the normal images' scores."""
    if not 0.0 <= percentile <= 100.0:
        raise GenlabError(f"percentile must be within 0..100, got {percentile}")
    grid, values = _curve(calibration, name)
    return float(np.interp(percentile, grid, values))


def normalized(calibration: dict[str, Any], name: str, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Raw scores -> [0, 1], with ``threshold`` at exactly 0.5 (anomalib's convention; PyOD's probabilities
    read the same way): ``(score - threshold) / (max - min) + 0.5``, clipped, where min and max are the
    smallest and largest scores of the held-out normal images. Non-decreasing in the raw score."""
    _, values = _curve(calibration, name)
    spread = max(float(values[-1] - values[0]), 1e-12)
    return np.clip((np.asarray(scores, np.float64) - threshold) / spread + 0.5, 0.0, 1.0)


def percentile_of(calibration: dict[str, Any], name: str, scores: np.ndarray) -> np.ndarray:
    """Raw scores -> their percentile (0-100) among the normal images' scores.

    Scores below the smallest calibrated one get 0, above the largest 100. Where several grid
    points share a value (ties), the middle of the tied range is used.
    """
    grid, values = _curve(calibration, name)
    scores = np.asarray(scores, np.float64)
    first = np.searchsorted(values, scores, side="left")  # first grid point >= score
    last = np.searchsorted(values, scores, side="right")  # first grid point > score
    tied = first < last
    # strictly between two grid values: linear interpolation between their percentiles
    i = np.clip(first, 1, len(values) - 1)
    span = values[i] - values[i - 1]
    t = np.divide(scores - values[i - 1], span, out=np.zeros_like(scores), where=span > 0)
    between = grid[i - 1] + np.clip(t, 0.0, 1.0) * (grid[i] - grid[i - 1])
    at_tie = (grid[np.minimum(first, len(grid) - 1)] + grid[np.maximum(last - 1, 0)]) / 2.0
    result = np.where(tied, at_tie, between)
    result = np.where(scores < values[0], 0.0, result)
    return np.where(scores > values[-1], 100.0, result)
