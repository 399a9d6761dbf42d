"""Latents to decode: the N(0, I) prior, or a Gaussian mixture fitted to the training images' codes.

An autoencoder's decoder learns from the posterior codes of its training images, and those do not
fill N(0, I): prior draws that land between them decode to scrawls (the "holes" of the prior).
Ex-post density estimation (Ghosh et al. 2020, "From variational to deterministic autoencoders",
sec. 4) fits a density to the posterior means after training and samples from it instead.
Every family has an encoder (the GAN: f-AnoGAN's) and fits one at the end of training
(:func:`fit_prior`); an export without a prior samples N(0, I). Where the training images carry
classes, the mixture is fitted per class and flattened into one (the model still takes no label)
when that makes the held-out images' codes likelier, which it did for every family on mnist-5k:
ten components over ten digits straddle digits, and draws between them decode to scrawls
(benchmarks/sample_quality.py has the figures).

A prior is a JSON-friendly dict (it goes into the checkpoint and the export manifest)::

    kind        "gaussian-mixture"
    weights     [K]            mixture weights
    means       [K][D]         component means
    scale_tril  [K][D][D]      lower Cholesky factor of each component's covariance
    fitted_on   what it was fitted on, for people

A conditional model's codes still carry some of the class (measured: one mixture over all classes
drew a "3" code for a requested 7 often enough to drop the conditional VAE-GAN's class fidelity
from 0.93 to 0.78), so it gets one mixture per class, p(z | y)::

    kind        "per-class-gaussian-mixture"
    classes     [C] mixtures as above, class k's fitted to the codes of class k
    fitted_on   what it was fitted on

NumPy only: the export reader, the service and the evaluators all sample through :func:`sample_latents`,
so a seed gives the same latents from a checkpoint and from its export. A conditional model's
labels come from :func:`balanced_labels` (every class equally often, seeded) or :func:`class_rows`
(a grid with one row per class).
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIXTURE_COMPONENTS = 10  # Ghosh et al. use 10 on MNIST; fewer when there are few codes per dimension
CODES_PER_PARAMETER_DIM = 4  # at least this many codes per latent dimension for each component


class Mixture:
    """A ``gaussian-mixture`` prior as the arrays a draw needs, converted once (a manifest's nested lists of
    30 x 32 x 32 Cholesky factors cost more to convert than the draw itself)."""

    def __init__(self, prior: dict[str, Any]):
        weights = np.asarray(prior["weights"], np.float64)
        p = weights / weights.sum()
        # Generator.choice(K, p=p) draws rng.random(n) and finds it in this normalised cumulative sum: the same
        # arithmetic, so the same components for a seed
        self.cdf = p.cumsum()
        self.cdf /= self.cdf[-1]
        self.means = np.asarray(prior["means"], np.float32)
        self.scale_tril = np.asarray(prior["scale_tril"], np.float32)
        self.dim = self.means.shape[1]

    def sample(self, n: int, latent_dim: int, rng: np.random.Generator, temperature: float) -> np.ndarray:
        if self.dim != latent_dim:
            raise ValueError(f"prior has {self.dim}-dimensional means, the model {latent_dim}")
        component = self.cdf.searchsorted(rng.random(n), side="right")
        noise = rng.standard_normal((n, latent_dim), dtype=np.float32) * np.float32(temperature)
        # take(): the rows fancy indexing gives, at a third of its cost for a request's few rows
        return self.means.take(component, axis=0) + np.einsum(
            "nij,nj->ni", self.scale_tril.take(component, axis=0), noise
        )


class ClassMixtures:
    """A ``per-class-gaussian-mixture`` prior: one :class:`Mixture` per class, converted once."""

    def __init__(self, prior: dict[str, Any]):
        self.classes = [Mixture(mixture) for mixture in prior["classes"]]


Prior = Mixture | ClassMixtures


def prepare_prior(prior: dict[str, Any] | Prior | None) -> Prior | None:
    """A prior as :func:`sample_latents` draws from it; what holds one for many draws (an open export) prepares it
    once."""
    if prior is None or isinstance(prior, (Mixture, ClassMixtures)):
        return prior
    return ClassMixtures(prior) if prior.get("kind") == "per-class-gaussian-mixture" else Mixture(prior)


def sample_latents(
    n: int,
    latent_dim: int,
    seed: int | None = None,
    temperature: float = 1.0,
    prior: dict[str, Any] | Prior | None = None,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """float32 [n, latent_dim] from ``prior`` (N(0, I) when None; a prior's dict or :func:`prepare_prior`'s result);
    the same seed gives the same latents.

    ``temperature`` scales the standard-normal noise (around each component's mean, for a mixture).
    A per-class prior needs the ``labels`` [n] the latents will be decoded with.
    """
    prior = prepare_prior(prior)
    if prior is None:
        return np.random.default_rng(seed).standard_normal((n, latent_dim), dtype=np.float32) * np.float32(temperature)
    if isinstance(prior, Mixture):
        return prior.sample(n, latent_dim, np.random.default_rng(seed), temperature)
    if labels is None or len(labels) != n:
        raise ValueError("a per-class prior needs one label per latent")
    labels = np.asarray(labels, np.int64)
    out = np.empty((n, latent_dim), np.float32)
    for k in np.unique(labels):  # one stream per class, seeded by (seed, class): a label's latents do not
        where = np.flatnonzero(labels == k)  # depend on which other classes are in the request
        class_seed = None if seed is None else [seed, int(k)]
        out[where] = prior.classes[int(k)].sample(
            len(where), latent_dim, np.random.default_rng(class_seed), temperature
        )
    return out


INTERPOLATIONS = ("slerp", "linear")


def interpolate(a: np.ndarray, b: np.ndarray, steps: int, method: str = "slerp") -> np.ndarray:
    """float32 [steps, D]: the path from latent ``a`` [D] to ``b`` [D], both ends included, exactly.

    ``slerp`` walks the great circle between the two vectors, scaling their lengths with it (White 2016, "Sampling
    generative networks"): Gaussian latents concentrate near a sphere, and the straight line between two of them
    passes through the less likely middle, where ``linear`` goes. Vectors at an angle below 1e-6 rad are walked
    linearly.
    """
    if method not in INTERPOLATIONS:
        raise ValueError(f"interpolation {method!r}; one of {', '.join(INTERPOLATIONS)}")
    if steps < 2:
        raise ValueError(f"an interpolation has at least 2 steps, got {steps}")
    a64, b64 = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    norms = np.linalg.norm(a64) * np.linalg.norm(b64)
    omega = np.arccos(np.clip(a64 @ b64 / norms, -1.0, 1.0)) if norms > 0 else 0.0
    if method == "linear" or omega < 1e-6:
        path = (1.0 - t) * a64 + t * b64
    else:
        path = (np.sin((1.0 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)
    path[0], path[-1] = a64, b64  # the ends are the given latents, not a rounding of them
    return path.astype(np.float32)


LABEL_SEED_OFFSET = 104_729  # labels and latents of one seed come from separate streams


def balanced_labels(n: int, classes: int, seed: int | None = None) -> np.ndarray:
    """int64 [n]: each class n // classes or n // classes + 1 times (which classes get the extra ones, and the order,
    are seeded); the same seed gives the same labels."""
    rng = np.random.default_rng(None if seed is None else seed + LABEL_SEED_OFFSET)
    labels = np.arange(n, dtype=np.int64) % classes
    rng.shuffle(labels)
    offset = rng.integers(classes) if classes else 0  # so a small n is not always the first classes
    return (labels + offset) % classes


def class_rows(classes: int, per_class: int) -> np.ndarray:
    """int64 [classes * per_class]: per_class 0s, then per_class 1s, ...: one grid row per class."""
    return np.repeat(np.arange(classes, dtype=np.int64), per_class)


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


def fit_class_mixtures(
    codes: np.ndarray, labels: np.ndarray, classes: int, seed: int = 0, fitted_on: str = ""
) -> dict[str, Any]:
    """One :func:`fit_mixture` per class, on that class's codes; a class without codes gets N(0, I)'s."""
    codes, labels = np.asarray(codes, np.float64), np.asarray(labels)
    dim = codes.shape[1]
    standard = {
        "kind": "gaussian-mixture",
        "weights": [1.0],
        "means": [[0.0] * dim],
        "scale_tril": [np.eye(dim).tolist()],
        "fitted_on": "nothing (no codes of this class)",
    }
    mixtures = [fit_mixture(codes[labels == k], seed) if (labels == k).sum() > 1 else standard for k in range(classes)]
    return {
        "kind": "per-class-gaussian-mixture",
        "classes": mixtures,
        "fitted_on": fitted_on or f"posterior means of {len(codes)} training images, per class",
    }


def mixture_log_likelihood(prior: dict[str, Any], codes: np.ndarray) -> float:
    """The mean log-density of ``codes`` [N, D] under a ``gaussian-mixture`` prior (nats per code)."""
    from scipy.special import logsumexp

    codes = np.asarray(codes, np.float64)
    weights = np.asarray(prior["weights"], np.float64)
    means = np.asarray(prior["means"], np.float64)
    tril = np.asarray(prior["scale_tril"], np.float64)
    dim = codes.shape[1]
    per_component = []
    for w, mean, lower in zip(weights / weights.sum(), means, tril):
        white = np.linalg.solve(lower, (codes - mean).T)  # L^-1 (x - mean): a standard normal under the component
        log_det = np.log(np.abs(np.diag(lower))).sum()
        per_component.append(np.log(w) - 0.5 * (white**2).sum(axis=0) - log_det - 0.5 * dim * np.log(2 * np.pi))
    return float(logsumexp(np.stack(per_component), axis=0).mean())


def flatten_class_mixtures(per_class: dict[str, Any], class_weights: np.ndarray) -> dict[str, Any]:
    """A per-class prior -> one ``gaussian-mixture`` whose components are every class's, each class weighted by
    ``class_weights`` (its share of the codes): what an unconditional model, which takes no label, samples."""
    mixtures = per_class["classes"]
    share = np.asarray(class_weights, np.float64) / np.sum(class_weights)
    return {
        "kind": "gaussian-mixture",
        "weights": [float(c * w) for c, m in zip(share, mixtures) for w in m["weights"]],
        "means": [mean for m in mixtures for mean in m["means"]],
        "scale_tril": [lower for m in mixtures for lower in m["scale_tril"]],
        "fitted_on": per_class["fitted_on"],
    }


def fit_prior(
    codes: np.ndarray, labels: np.ndarray, held_out_codes: np.ndarray, seed: int = 0, fitted_on: str = ""
) -> dict[str, Any]:
    """An unconditional model's prior: the mixture, of two candidates, under which the held-out images' codes are
    most likely (mean log-density; the samples are never looked at).

    - pooled: :func:`fit_mixture` over all the codes;
    - per class, where the images carry two or more classes: :func:`fit_class_mixtures` flattened into one mixture,
      each class weighted by its share. The model takes no label; the labels only say where the code clusters are.
      A mixture of ten components over ten digits lets components straddle two digits, and draws between them
      decode to scrawls (benchmarks/sample_quality.py).
    """
    codes, labels = np.asarray(codes, np.float64), np.asarray(labels)
    candidates = {"pooled": fit_mixture(codes, seed)}
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) >= 2:
        index = np.searchsorted(classes, labels)
        candidates["per class"] = flatten_class_mixtures(fit_class_mixtures(codes, index, len(classes), seed), counts)
    likelihood = {name: mixture_log_likelihood(prior, held_out_codes) for name, prior in candidates.items()}
    chosen = max(likelihood, key=likelihood.get)
    where = fitted_on or f"posterior means of {len(codes)} training images"
    return {
        **candidates[chosen],
        "fitted_on": f"{where}{', per class' if chosen == 'per class' else ''}",
        "held_out_log_likelihood": {name: round(value, 4) for name, value in likelihood.items()},
    }


def describe(prior: dict[str, Any] | None) -> str:
    if prior is None:
        return "standard normal N(0, I)"
    if prior.get("kind") == "per-class-gaussian-mixture":
        sizes = sorted({len(m["weights"]) for m in prior["classes"]})
        return (
            f"one Gaussian mixture per class ({len(prior['classes'])} classes, "
            f"{'/'.join(map(str, sizes))} components) fitted to the {prior['fitted_on']}"
        )
    return f"Gaussian mixture of {len(prior['weights'])} components fitted to the {prior['fitted_on']}"
