"""A prior prepared once draws exactly what drawing from its dict drew: the same latents, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from genlab.latents import Mixture, fit_class_mixtures, fit_mixture, prepare_prior, sample_latents


def _reference(n, latent_dim, seed, temperature, prior):
    """The draw from a mixture's dict, converting its lists and choosing components with Generator.choice."""
    rng = np.random.default_rng(seed)
    weights = np.asarray(prior["weights"], np.float64)
    means = np.asarray(prior["means"], np.float32)
    tril = np.asarray(prior["scale_tril"], np.float32)
    component = rng.choice(len(weights), size=n, p=weights / weights.sum())
    noise = rng.standard_normal((n, latent_dim), dtype=np.float32) * np.float32(temperature)
    return (means[component] + np.einsum("nij,nj->ni", tril[component], noise)).astype(np.float32)


@pytest.fixture(scope="module")
def codes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 900)
    return rng.standard_normal((900, 6)) + labels[:, None] * 2.0, labels


def test_a_prepared_mixture_draws_the_same_latents_bit_for_bit(codes):
    prior = fit_mixture(codes[0])
    assert len(prior["weights"]) > 1
    prepared = prepare_prior(prior)
    assert isinstance(prepared, Mixture) and prepare_prior(prepared) is prepared
    for seed in range(200):
        for n, temperature in ((1, 1.0), (7, 0.7), (64, 1.0)):
            expected = _reference(n, 6, seed, temperature, prior)
            assert np.array_equal(sample_latents(n, 6, seed, temperature, prepared), expected)
            assert np.array_equal(sample_latents(n, 6, seed, temperature, prior), expected)
            assert sample_latents(n, 6, seed, temperature, prepared).dtype == np.float32


def test_a_prepared_per_class_prior_draws_each_class_from_its_own_stream(codes):
    prior = fit_class_mixtures(*codes, classes=3)
    prepared = prepare_prior(prior)
    labels = np.array([2, 0, 2, 1, 0])
    z = sample_latents(5, 6, 11, 1.0, prepared, labels)
    assert np.array_equal(z, sample_latents(5, 6, 11, 1.0, prior, labels))
    for k in range(3):
        rows = np.flatnonzero(labels == k)
        assert np.array_equal(z[rows], _reference(len(rows), 6, [11, k], 1.0, prior["classes"][k]))
    with pytest.raises(ValueError, match="one label per latent"):
        sample_latents(5, 6, 11, 1.0, prepared)
    with pytest.raises(ValueError, match="6-dimensional"):
        sample_latents(2, 4, 1, 1.0, prepare_prior(fit_mixture(codes[0])))


def test_an_export_prepares_its_prior_once(exports):
    from genlab.export.reader import read_export

    model = read_export(exports["vaegan"])
    assert model.prior is not None and model.latent_prior is model.latent_prior
    assert np.array_equal(
        sample_latents(3, model.latent_dim, 4, 1.0, model.latent_prior),
        sample_latents(3, model.latent_dim, 4, 1.0, model.prior),
    )


def test_interpolation_keeps_its_ends_exactly_and_slerp_walks_the_circle():
    from genlab.latents import interpolate

    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    for method in ("slerp", "linear"):
        path = interpolate(a, b, 7, method)
        assert path.dtype == np.float32 and path.shape == (7, 16)
        assert np.array_equal(path[0], a) and np.array_equal(path[-1], b)
    np.testing.assert_allclose(interpolate(a, b, 3, "linear")[1], (a + b) / 2, rtol=1e-6)
    # two orthogonal unit vectors: slerp stays on the unit circle, its middle is (a + b) / sqrt(2)
    e0, e1 = np.eye(16, dtype=np.float32)[:2]
    circle = interpolate(e0, e1, 9, "slerp")
    np.testing.assert_allclose(np.linalg.norm(circle, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(circle[4], (e0 + e1) / np.sqrt(2), atol=1e-7)
    np.testing.assert_allclose(interpolate(a, a, 4, "slerp"), np.tile(a, (4, 1)), rtol=1e-6)  # no angle: linear
    with pytest.raises(ValueError, match="at least 2 steps"):
        interpolate(a, b, 1)
    with pytest.raises(ValueError, match="one of slerp, linear"):
        interpolate(a, b, 4, "cubic")
