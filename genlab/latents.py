"""Latents to decode: the N(0, I) prior, or a Gaussian mixture fitted to the training images' codes.

An autoencoder's decoder learns from the posterior codes of its training images, and those do not
fill N(0, I): prior draws that land between them decode to scrawls (the "holes" of the prior).
Ex-post density estimation (Ghosh et al. 2020, "From variational to deterministic autoencoders",
sec. 4) fits a density to the posterior means after training and samples from it instead. On
mnist-5k, after the README's 20 epochs, it turns a VAE-GAN's samples from 57% confidently recognised
digits (class entropy 0.92, lenet FD 383) into 74% (0.99, FD 61; benchmarks/sample_quality.py).
Every family has an encoder (the GAN: f-AnoGAN's) and fits one at the end of training; an export
without a prior samples N(0, I).

A prior is a JSON-friendly dict (it goes into the checkpoint and the export manifest)::

    kind        "gaussian-mixture"
    weights     [K]            mixture weights
    means       [K][D]         component means
    scale_tril  [K][D][D]      lower Cholesky factor of each component's covariance
    fitted_on   what it was fitted on, for people

NumPy only: the export reader, the service and the evaluators all sample through :func:`sample_latents`,
so a seed gives the same latents from a checkpoint and from its export.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

MIXTURE_COMPONENTS = 10  # Ghosh et al. use 10 on MNIST; fewer when there are few codes per dimension
CODES_PER_PARAMETER_DIM = 4  # at least this many codes per latent dimension for each component


def sample_latents(n: int, latent_dim: int, seed: Optional[int] = None, temperature: float = 1.0,
                   prior: Optional[dict[str, Any]] = None) -> np.ndarray:
    """float32 [n, latent_dim] from ``prior`` (N(0, I) when None); the same seed gives the same latents.

    ``temperature`` scales the standard-normal noise (around each component's mean, for a mixture).
    """
    rng = np.random.default_rng(seed)
    if prior is None:
        return rng.standard_normal((n, latent_dim), dtype=np.float32) * np.float32(temperature)
    weights = np.asarray(prior["weights"], np.float64)
    means = np.asarray(prior["means"], np.float32)
    tril = np.asarray(prior["scale_tril"], np.float32)
    if means.shape[1] != latent_dim:
        raise ValueError(f"prior has {means.shape[1]}-dimensional means, the model {latent_dim}")
    component = rng.choice(len(weights), size=n, p=weights / weights.sum())
    noise = rng.standard_normal((n, latent_dim), dtype=np.float32) * np.float32(temperature)
    return (means[component] + np.einsum("nij,nj->ni", tril[component], noise)).astype(np.float32)


def fit_mixture(codes: np.ndarray, seed: int = 0, fitted_on: str = "") -> dict[str, Any]:
    """A full-covariance Gaussian mixture (scikit-learn, EM) fitted to ``codes`` [N, D]."""
    from sklearn.mixture import GaussianMixture

    codes = np.asarray(codes, np.float64)
    n, dim = codes.shape
    k = int(max(1, min(MIXTURE_COMPONENTS, n // (CODES_PER_PARAMETER_DIM * dim))))
    gmm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(codes)
    return {
        "kind": "gaussian-mixture",
        "weights": gmm.weights_.tolist(),
        "means": gmm.means_.tolist(),
        "scale_tril": np.linalg.cholesky(gmm.covariances_).tolist(),
        "fitted_on": fitted_on or f"posterior means of {n} training images",
    }


def describe(prior: Optional[dict[str, Any]]) -> str:
    if prior is None:
        return "standard normal N(0, I)"
    return f"Gaussian mixture of {len(prior['weights'])} components fitted to the {prior['fitted_on']}"
