"""What a Fréchet distance at small N can and cannot say: a bootstrap interval and a bias warning.

**Interval.** The generated features are resampled with replacement ``rounds`` times (round b
seeded by ``(seed, b)``, so any subset of the rounds can be computed anywhere, e.g. split over
ranks, and give the same numbers), the reference statistics stay fixed, and the interval is the
2.5th-97.5th percentile of the resampled distances. It shows how much the figure moves with the
draw of N samples. A resample repeats some images, which lowers its effective N and raises its
distance, so the interval lies a little above the point estimate; it is a spread, not a
correction of the bias.

**Bias.** The Fréchet distance is biased upward by roughly ``c / N`` (Chong & Forsyth 2020,
"Effectively unbiased FID"): at N below ``BIAS_DIMENSIONS`` times the feature dimension (about
10,000 for Inception's 2,048 features) that bias is of the order of the differences between
good models, so small-N figures compare only with figures at the same N. KID is unbiased at any
N and is the number to trust there. The same floor applies to the reference split: against fewer
reference images than that, no number of samples makes the distance meaningful.

``tr sqrt(S1 S2)`` is computed as the sum of the square roots of the eigenvalues of
``R S1 R`` with ``R = S2^(1/2)`` (similar matrices share eigenvalues), or, with fewer samples
than dimensions, of the smaller Gram matrix ``Xc R^2 Xc^T / (N - 1)``: a symmetric eigenproblem
of size min(N, D) per round.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BIAS_DIMENSIONS = 5  # warn below this many samples per feature dimension
INTERVAL = (2.5, 97.5)


def _below_bias_floor(n: int, feature_dim: int) -> str | None:
    """'below 640 = 5 x 128 feature dimensions' where ``n`` images are too few for the Fréchet distance's bias to
    be small, else None."""
    floor = BIAS_DIMENSIONS * feature_dim
    if n >= floor:
        return None
    return f"below {floor:,} = {BIAS_DIMENSIONS} x {feature_dim} feature dimensions"


def bias_warning(n: int, feature_dim: int, label: str) -> str | None:
    """A one-line warning when ``n`` samples are where the Fréchet distance's small-sample bias dominates, else None."""
    below = _below_bias_floor(n, feature_dim)
    if below is None:
        return None
    return (
        f"{label} at n={n} is biased upward ({below}): compare it only with figures at the same n; "
        f"KID is unbiased at any n"
    )


def reference_warning(n_reference: int, feature_dim: int, label: str, reference: str) -> str | None:
    """A one-line warning when the reference split ``reference`` holds too few images (``n_reference``) for the
    Fréchet distance, whatever the number of samples, else None."""
    below = _below_bias_floor(n_reference, feature_dim)
    if below is None:
        return None
    return (
        f"the reference {reference} holds only {n_reference:,} images ({below}): {label} against so few is "
        f"dominated by its bias; use KID (unbiased at any n) or a larger reference (--ref)"
    )


def reference_statistics(reference: np.ndarray) -> dict[str, np.ndarray]:
    """mean, covariance, its square root and trace of the reference features (float64)."""
    x = np.asarray(reference, np.float64)
    sigma = np.cov(x, rowvar=False)
    w, v = np.linalg.eigh(sigma)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return {"mu": x.mean(0), "sigma": sigma, "root": root, "trace": float(np.trace(sigma))}


def frechet_distance(features: np.ndarray, ref: dict[str, np.ndarray]) -> float:
    """The Fréchet distance of ``features`` [N, D] from the reference statistics of :func:`reference_statistics`."""
    x = np.asarray(features, np.float64)
    mu = x.mean(0)
    centred = x - mu
    n, d = centred.shape
    if n <= d:  # the Gram matrix shares the nonzero eigenvalues of R S R
        y = centred @ ref["root"]
        eig = np.linalg.eigvalsh(y @ y.T / (n - 1))
        trace = float(np.einsum("ij,ij->", centred, centred) / (n - 1))
    else:
        sigma = centred.T @ centred / (n - 1)
        eig = np.linalg.eigvalsh(ref["root"] @ sigma @ ref["root"])
        trace = float(np.trace(sigma))
    diff = mu - ref["mu"]
    return float(diff @ diff + trace + ref["trace"] - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


def bootstrap_rounds(features: np.ndarray, ref: dict[str, np.ndarray], rounds: list[int], seed: int) -> list[float]:
    """The resampled distances of the given round numbers (each seeded by (seed, round))."""
    n = len(features)
    out = []
    for b in rounds:
        index = np.random.default_rng([seed, b]).integers(0, n, n)
        out.append(frechet_distance(features[index], ref))
    return out


def interval(distances: list[float]) -> dict[str, Any]:
    """The bootstrap interval of the resampled distances: {low, high, rounds, percentiles}."""
    low, high = np.percentile(np.asarray(distances, np.float64), INTERVAL)
    return {"low": float(low), "high": float(high), "rounds": len(distances), "percentiles": list(INTERVAL)}
