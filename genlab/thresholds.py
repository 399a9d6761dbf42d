"""Torch-free reading of anomaly calibration: raw score <-> percentile among normal images.

A calibration (written at the end of training, copied into every export's manifest) holds,
for each score component, its quantiles over held-out normal images on the grid
``percentiles`` (0, 0.1, ..., 100). Both directions interpolate linearly on that grid, so
``percentile_of(cal, name, quantile(cal, name, p)) == p`` wherever the quantiles increase.

Each function takes the manifest's calibration dict or a :class:`Calibration`, the same numbers
as arrays, prepared once (:func:`prepare_calibration`) by whatever scores many requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from genlab.errors import GenlabError

DEFAULT_PERCENTILE = 99.0
# below this many calibration images, fewer than one lies above the default threshold: it is set by the few highest
# normal scores and a warning says so
MIN_CALIBRATION_IMAGES = round(100 / (100 - DEFAULT_PERCENTILE))


@dataclass(frozen=True)
class Calibration:
    """A calibration's grid and quantiles as read-only float64 arrays: ``table[k]`` is score ``names[k]``'s
    quantiles on the grid ``percentiles``."""

    percentiles: np.ndarray
    names: tuple[str, ...]
    table: np.ndarray
    # row k's quantiles q as k + q*1j, one sorted array: numpy orders complex numbers by real part, then imaginary
    # part, so one searchsorted finds, for each score, where it falls on its own row (:func:`percentiles_of`)
    keys: np.ndarray


def prepare_calibration(calibration: dict[str, Any] | Calibration) -> Calibration:
    """The manifest's calibration dict as arrays; a :class:`Calibration` comes back as it is."""
    if isinstance(calibration, Calibration):
        return calibration
    grid = np.array(calibration["percentiles"], np.float64)
    scores = calibration.get("scores", {})
    table = np.array([scores[name] for name in scores], np.float64).reshape(len(scores), len(grid))
    keys = _keys(np.arange(len(table))[:, None], table).reshape(-1)
    grid.flags.writeable = table.flags.writeable = keys.flags.writeable = False
    return Calibration(grid, tuple(scores), table, keys)


def _keys(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """rows + values*1j, set part by part (multiplying by 1j would turn an infinite value's real part into nan)."""
    keys = np.empty(np.broadcast_shapes(rows.shape, values.shape), np.complex128)
    keys.real, keys.imag = rows, values
    return keys


def _rows(calibration: Calibration, names: Iterable[str]) -> list[int]:
    rows = []
    for name in names:
        if name not in calibration.names:
            calibrated = ", ".join(sorted(calibration.names)) or "none"
            raise GenlabError(f"no calibration for score {name!r}; calibrated scores: {calibrated}")
        rows.append(calibration.names.index(name))
    return rows


def _curve(calibration: dict[str, Any] | Calibration, name: str) -> tuple[np.ndarray, np.ndarray]:
    prepared = prepare_calibration(calibration)
    return prepared.percentiles, prepared.table[_rows(prepared, [name])[0]]


def quantile(calibration: dict[str, Any] | Calibration, name: str, percentile: float) -> float:
    """The raw score at ``percentile`` (0-100) of the normal images' scores."""
    if not 0.0 <= percentile <= 100.0:
        raise GenlabError(f"percentile must be within 0..100, got {percentile}")
    grid, values = _curve(calibration, name)
    return float(np.interp(percentile, grid, values))


def normalized(
    calibration: dict[str, Any] | Calibration, name: str, scores: np.ndarray, threshold: float
) -> np.ndarray:
    """Raw scores -> [0, 1], with ``threshold`` at exactly 0.5 (anomalib's convention; PyOD's probabilities
    read the same way): ``(score - threshold) / (max - min) + 0.5``, clipped, where min and max are the
    smallest and largest scores of the held-out normal images. Non-decreasing in the raw score."""
    _, values = _curve(calibration, name)
    spread = max(float(values[-1] - values[0]), 1e-12)
    return np.clip((np.asarray(scores, np.float64) - threshold) / spread + 0.5, 0.0, 1.0)


def percentile_of(calibration: dict[str, Any] | Calibration, name: str, scores: np.ndarray) -> np.ndarray:
    """Raw scores -> their percentile (0-100) among the normal images' scores.

    Scores below the smallest calibrated one get 0, above the largest 100. Where several grid
    points share a value (ties), the middle of the tied range is used.
    """
    return percentiles_of(calibration, {name: scores})[name]


def percentiles_of(
    calibration: dict[str, Any] | Calibration, scores: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """:func:`percentile_of` for several scores of the same shape at once ({name: raw scores} -> {name: percentiles}),
    in one pass over all of them: what one request's components cost is a few array operations, not a few per
    component."""
    prepared = prepare_calibration(calibration)
    names = list(scores)
    if not names:
        return {}
    rows = np.array(_rows(prepared, names))[:, None]
    raw = np.array([np.asarray(scores[name], np.float64).reshape(-1) for name in names]).reshape(len(names), -1)
    grid, table = prepared.percentiles, prepared.table
    # first grid point >= score and first grid point > score, on each score's own row (a nan score sorts after
    # every row, as it does after its own: the minimum keeps it at its row's end). np.minimum / np.maximum rather
    # than np.clip: the same numbers, at a fraction of the cost on a request's few values
    queries, start, end = _keys(rows, raw).reshape(-1), rows * len(grid), len(grid)
    first = np.minimum(np.searchsorted(prepared.keys, queries, side="left").reshape(raw.shape) - start, end)
    last = np.minimum(np.searchsorted(prepared.keys, queries, side="right").reshape(raw.shape) - start, end)
    # strictly between two grid values: linear interpolation between their percentiles
    i = np.minimum(np.maximum(first, 1), end - 1)
    below, above = table[rows, i - 1], table[rows, i]
    span = above - below
    t = np.divide(raw - below, span, out=np.zeros_like(raw), where=span > 0)
    between = grid[i - 1] + np.minimum(np.maximum(t, 0.0), 1.0) * (grid[i] - grid[i - 1])
    at_tie = (grid[np.minimum(first, end - 1)] + grid[np.maximum(last - 1, 0)]) / 2.0
    result = np.where(first < last, at_tie, between)
    result[raw < table[rows, 0]] = 0.0
    result[raw > table[rows, -1]] = 100.0
    return {name: row.reshape(np.shape(scores[name])) for name, row in zip(names, result)}


def unseen_false_positive_rate(scores: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> float | None:
    """The leave-one-out estimate of the false-positive rate that the ``percentile`` threshold has on normal images
    it was not set on: each image against the threshold set on the others (linear interpolation, as the
    calibration's quantiles are). None for fewer than 2 images.

    The threshold is set on the same images it is checked against, so the share of them above it is ``1 - p/100``
    by construction; on unseen images it is higher, the more so the fewer images there are (on n images, the
    largest alone is exceeded by about 1 in n + 1 unseen ones)."""
    values = np.sort(np.asarray(scores, np.float64).reshape(-1))
    n = len(values)
    if n < 2:
        return None
    # without image i (at rank i), the k-th smallest of the others is values[k] below rank i, values[k + 1] from it
    position = percentile / 100.0 * (n - 2)
    low = int(np.floor(position))
    high = min(low + 1, n - 2)
    ranks = np.arange(n)

    def others(k: int) -> np.ndarray:
        return np.where(k < ranks, values[k], values[min(k + 1, n - 1)])

    thresholds = others(low) + (position - low) * (others(high) - others(low))
    return float(np.mean(values > thresholds))


def calibration_check(scores: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> dict[str, Any]:
    """What a calibration on ``scores`` (held-out normal images' primary scores) promises: its leave-one-out
    false-positive rate at ``percentile`` on unseen normal images, and a warning where it rests on fewer than
    MIN_CALIBRATION_IMAGES images."""
    n = int(np.size(scores))
    unseen = unseen_false_positive_rate(scores, percentile)
    warning = None
    if n < MIN_CALIBRATION_IMAGES:
        flags = "" if unseen is None else f", and on unseen normal images it flags about {unseen:.1%}"
        warning = (
            f"the threshold rests on {n} held-out normal images, fewer than the {MIN_CALIBRATION_IMAGES} the "
            f"{percentile:g}th percentile needs to have one above it: it is set by the highest of them{flags}; "
            f"train on more normal images for a threshold that holds"
        )
    return {
        "percentile": percentile,
        "unseen_fpr": unseen,
        "method": f"leave-one-out over the {n} held-out normal images",
        "warning": warning,
    }


def calibration_summary(calibration: dict[str, Any]) -> dict[str, Any]:
    """A calibration for people (``genlab info``): where it was measured, its check (:func:`calibration_check`) and
    each score's 50th / 95th / 99th percentiles."""
    return {
        "split": calibration["split"],
        "n": calibration["n"],
        **({"check": calibration["check"]} if calibration.get("check") else {}),
        "scores": {
            name: {
                **{f"p{p}": quantile(calibration, name, p) for p in (50, 95, 99)},
                "meaning": calibration.get("descriptions", {}).get(name, ""),
            }
            for name in calibration["scores"]
        },
    }
