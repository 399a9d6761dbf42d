"""Fitted anomaly scores, the normalised score, anomaly maps, the fitted latent prior and the one-class budget."""

from __future__ import annotations

import bisect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.calibration import fit_to_training_data, score_images
from genlab.config import ONE_CLASS_STEPS, TrainConfig, resolve_epochs
from genlab.data import ImageData
from genlab.errors import GenlabError
from genlab.latents import fit_mixture, fit_prior, mixture_log_likelihood, sample_latents
from genlab.measures import recon_error
from genlab.models import build_model
from genlab.models.base import stroke_error
from genlab.pixels import model_to_uint8
from genlab.thresholds import normalized, percentile_of, percentiles_of, prepare_calibration, quantile
from tests.conftest import FAMILIES, seeded_images, tiny_config

REPO = Path(__file__).resolve().parents[1]


def _uint8(n: int, seed: int) -> torch.Tensor:
    return model_to_uint8(seeded_images(n, seed=seed))


def _data(n: int, seed: int, classes: int = 1) -> ImageData:
    return ImageData(_uint8(n, seed), torch.arange(n) % classes, "blobs", "train", tuple(map(str, range(classes))))


@pytest.fixture(scope="module", params=FAMILIES)
def fitted(request):
    torch.manual_seed(0)
    model = build_model(tiny_config(request.param)).eval()
    result = fit_to_training_data(model, _data(64, 1), _data(32, 2), torch.device("cpu"), seed=0)
    return model, result


def test_primary_score_is_the_mean_of_its_standardised_components(fitted):
    model, result = fitted
    held_out = score_images(model, _uint8(32, 2), torch.device("cpu"))
    names = type(model).primary_components
    z = [(held_out[n].double() - held_out[n].double().mean()) / held_out[n].double().std() for n in names]
    # standardised on exactly these held-out images: mean 0, and the primary score is the mean of the z-scores
    # (float32 outputs: an untrained component that is nearly constant loses digits once standardised)
    torch.testing.assert_close(held_out["score"].double(), torch.stack(z).mean(dim=0), rtol=1e-3, atol=2e-2)
    assert abs(held_out["score"].double().mean().item()) < 1e-2
    assert bool(model.score_fit.fitted) and set(result["score_fit"]) == {
        "primary_components",
        *dict(model.score_fit.named_buffers()),
    }
    assert set(result["calibration"]["scores"]) == set(held_out)


def test_fitted_distances_are_small_on_normal_data_and_larger_off_it(fitted):
    model, _ = fitted
    spaces = [f"{s}_distance" for s in model.score_fit.spaces]
    normal = score_images(model, _uint8(64, 1), torch.device("cpu"))
    noise = score_images(
        model,
        torch.randint(0, 256, (32, 1, 16, 16), generator=torch.Generator().manual_seed(3), dtype=torch.uint8),
        torch.device("cpu"),
    )
    for name in spaces:
        # at most 1 on the images it was fitted to (less where features are constant, or with shrinkage)
        assert 0.0 < normal[name].mean().item() <= 1.0 + 1e-3, (name, normal[name].mean())
        assert noise[name].median() > normal[name].median(), name


def test_score_fit_survives_the_checkpoint(fitted, tmp_path):
    from genlab.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from genlab.config import TrainConfig, to_dict

    model, result = fitted
    save_checkpoint(
        {
            "family": model.family,
            "model_config": to_dict(model.cfg),
            "train_config": to_dict(TrainConfig()),
            "data": {},
            "model": model.state_dict(),
            **result,
        },
        tmp_path / "last.pt",
    )
    loaded = model_from_checkpoint(load_checkpoint(tmp_path / "last.pt"))
    x = seeded_images(5, seed=9)
    for name, value in model.anomaly_scores(x).items():
        assert torch.equal(value, loaded.anomaly_scores(x)[name]), name


def test_fitted_prior_only_for_families_with_an_encoder(fitted):
    model, result = fitted
    assert (result["prior"] is not None) == model.has_encoder


def test_normalised_score_is_half_at_the_threshold_and_monotone():
    rng = np.random.default_rng(0)
    cal = {
        "percentiles": [round(0.1 * i, 1) for i in range(1001)],
        "scores": {"score": np.quantile(rng.normal(size=500), np.linspace(0, 1, 1001)).tolist()},
    }
    cut = quantile(cal, "score", 99.0)
    assert normalized(cal, "score", np.array([cut]), cut)[0] == pytest.approx(0.5)
    raw = np.sort(rng.normal(scale=3.0, size=2000))
    out = normalized(cal, "score", raw, cut)
    assert out.min() >= 0.0 and out.max() <= 1.0 and np.all(np.diff(out) >= 0)
    assert np.array_equal(out > 0.5, raw > cut)


def _percentile_reference(grid: list[float], values: list[float], x: float) -> float:
    """The documented percentile of one raw score, with the standard library's bisect."""
    if x < values[0] or x > values[-1]:
        return 0.0 if x < values[0] else 100.0
    first, last = bisect.bisect_left(values, x), bisect.bisect_right(values, x)
    if first < last:  # on a grid value (or a run of tied ones): the middle of the run
        return (grid[first] + grid[last - 1]) / 2.0
    i = min(max(first, 1), len(values) - 1)
    span = values[i] - values[i - 1]
    t = min(max((x - values[i - 1]) / span if span > 0 else 0.0, 0.0), 1.0)
    return grid[i - 1] + t * (grid[i] - grid[i - 1])


def test_percentiles_of_every_component_at_once_match_the_reference_one_score_at_a_time(exports):
    from genlab.export.reader import read_export

    model = read_export(exports["vaegan"])
    cal = dict(model.calibration)
    rng = np.random.default_rng(0)
    grid = list(cal["percentiles"])
    cal["scores"] = {
        **cal["scores"],
        "tied": sorted([0.0] * 300 + rng.normal(size=len(grid) - 300).tolist()),
        "constant": [1.0] * len(grid),
    }
    prepared = prepare_calibration(cal)
    assert not prepared.table.flags.writeable and prepared.names == tuple(cal["scores"])
    raw = {}
    for name, listed in cal["scores"].items():
        lo, hi = listed[0], listed[-1]
        raw[name] = np.array([*listed[::7], *rng.uniform(lo - 1, hi + 1, 60), -np.inf, np.inf, lo, hi])
    together = percentiles_of(prepared, raw)
    for name, listed in cal["scores"].items():
        expected = [_percentile_reference(grid, listed, float(x)) for x in raw[name]]
        assert together[name].tolist() == expected, name
        assert percentile_of(cal, name, raw[name]).tolist() == expected
        assert np.array_equal(normalized(prepared, name, raw[name], 0.3), normalized(cal, name, raw[name], 0.3))
        assert [quantile(prepared, name, p) for p in grid[::50]] == listed[::50]
    assert percentiles_of(prepared, {}) == {}
    with pytest.raises(GenlabError, match="no calibration for score 'nope'"):
        percentiles_of(prepared, {"score": raw["score"], "nope": raw["score"]})


def test_an_export_prepares_its_calibration_once(exports):
    from genlab.export.reader import read_export

    model = read_export(exports["vaegan"])
    assert model.calibration_curves is model.calibration_curves
    assert prepare_calibration(model.calibration_curves) is model.calibration_curves


def test_anomaly_map_has_the_image_shape_and_is_zero_for_a_perfect_reconstruction():
    """The score graph's map (genlab.export.onnx_export.anomaly_map): float32 |image - reconstruction| / 255."""
    from genlab.export.onnx_export import anomaly_map

    from genlab.config import ModelConfig
    from genlab.models import build_model
    from genlab.pixels import uint8_to_model

    model = build_model(ModelConfig(family="vae", image_size=8, width=4, latent_dim=2))
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 1, 8, 8), dtype=np.uint8))
    same = anomaly_map(model, images, uint8_to_model(images))
    assert same.dtype == torch.float32 and same.shape == images.shape and not same.any()
    other = images.clone()
    other[0, 0, 2, 3] = 255 - other[0, 0, 2, 3]
    diff = anomaly_map(model, images, uint8_to_model(other)).numpy()
    assert np.count_nonzero(diff) == 1 and diff.max() <= 1.0
    assert diff[0, 0, 2, 3] == np.float32(abs(255 - 2 * int(images[0, 0, 2, 3]))) / np.float32(255)
    np.testing.assert_allclose(
        (diff.astype(np.float64) ** 2).reshape(3, -1).mean(axis=1),
        recon_error(images.numpy(), other.numpy()),
        rtol=1e-6,
    )


def test_fitted_mixture_samples_like_its_codes_and_is_seeded():
    rng = np.random.default_rng(0)
    centres = np.array([[4.0, 0.0], [-4.0, 0.0]])
    codes = centres[rng.integers(0, 2, 2000)] + 0.3 * rng.normal(size=(2000, 2))
    prior = fit_mixture(codes, seed=0)
    json.dumps(prior)  # goes into manifests as it is
    z = sample_latents(4000, 2, seed=5, prior=prior)
    assert z.dtype == np.float32 and z.shape == (4000, 2)
    assert np.abs(np.abs(z[:, 0]) - 4.0).mean() < 0.5 and abs((z[:, 0] > 0).mean() - 0.5) < 0.05
    np.testing.assert_array_equal(z, sample_latents(4000, 2, seed=5, prior=prior))
    # without a prior: N(0, I), as before
    np.testing.assert_array_equal(
        sample_latents(3, 2, seed=1), np.random.default_rng(1).standard_normal((3, 2), dtype=np.float32)
    )


def test_mixture_log_likelihood_matches_scipy():
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(1)
    prior = fit_mixture(rng.normal(size=(600, 3)) * [1.0, 2.0, 0.5] + [0.0, 1.0, 0.0], seed=0)
    codes = rng.normal(size=(50, 3))
    reference = logsumexp(
        [
            np.log(w) + multivariate_normal(m, np.asarray(t) @ np.asarray(t).T).logpdf(codes)
            for w, m, t in zip(prior["weights"], prior["means"], prior["scale_tril"])
        ],
        axis=0,
    ).mean()
    assert mixture_log_likelihood(prior, codes) == pytest.approx(reference, rel=1e-9)


def test_an_unconditional_prior_is_the_candidate_the_held_out_codes_find_likelier():
    """Labelled codes get a per-class candidate (flattened: the model takes no label); the prior kept is the one under
    which held-out codes are likelier. Codes of a single class get the pooled mixture only."""
    rng = np.random.default_rng(0)

    def codes(n):  # sixteen thin classes crossing in a star: the pooled mixture's ten components straddle them
        labels = rng.integers(0, 16, n)
        angle = labels * np.pi / 16
        t = rng.normal(size=n) * 3
        points = np.stack([t * np.cos(angle), t * np.sin(angle)], 1) + 0.02 * rng.normal(size=(n, 2))
        return points, labels

    train, labels = codes(1600)
    held_out, _ = codes(400)
    prior = fit_prior(train, labels + 4, held_out, seed=0)  # any label values: only which images share one counts
    likelihood = prior["held_out_log_likelihood"]
    assert set(likelihood) == {"pooled", "per class"} and likelihood["per class"] > likelihood["pooled"]
    assert prior["kind"] == "gaussian-mixture" and prior["fitted_on"].endswith("per class")
    assert sum(prior["weights"]) == pytest.approx(1.0) and len(prior["weights"]) == len(prior["means"])
    assert mixture_log_likelihood(prior, held_out) == pytest.approx(likelihood["per class"], abs=1e-4)
    assert sample_latents(8, 2, seed=3, prior=prior).shape == (8, 2)  # no labels needed to sample it
    single = fit_prior(train, np.zeros(len(train), int), held_out, seed=0)
    assert set(single["held_out_log_likelihood"]) == {"pooled"} and not single["fitted_on"].endswith("per class")


def test_stroke_error_is_the_error_per_pixel_of_either_stroke():
    blank = -torch.ones(1, 1, 8, 8)
    stroke = blank.clone()
    stroke[..., 2:6, 3] = 1.0  # a 4-pixel white bar
    other = blank.clone()
    other[..., 2:6, 5] = 1.0  # the same bar two columns over
    assert stroke_error(blank, blank).item() == 0.0 and stroke_error(stroke, stroke).item() == 0.0
    # a missing stroke and an added one count alike: both bars' 8 pixels are wrong, out of the 8 they cover
    assert stroke_error(stroke, other).item() == pytest.approx(1.0)
    assert stroke_error(stroke, blank).item() == pytest.approx(1.0) == stroke_error(blank, stroke).item()
    # the whole-image error of the same mistake shrinks with the background, the per-stroke one does not
    assert recon_error(model_to_uint8(stroke).numpy(), model_to_uint8(blank).numpy())[0] == pytest.approx(4 / 64)
    # where every pixel is bright it is the whole-image recon_error
    x, y = torch.full((2, 3, 4, 4), 0.5), torch.full((2, 3, 4, 4), 0.2)
    expected = recon_error(model_to_uint8(x).numpy(), model_to_uint8(y).numpy())
    np.testing.assert_allclose(stroke_error(x, y).numpy(), expected)
    # batch-independent
    batch = torch.cat([stroke, other, blank])
    rec = torch.cat([other, stroke, stroke])
    np.testing.assert_array_equal(
        stroke_error(batch, rec).numpy(),
        torch.cat([stroke_error(batch[i : i + 1], rec[i : i + 1]) for i in range(3)]).numpy(),
    )


def test_one_class_vae_runs_get_their_own_learning_rate(tmp_path):
    """One-class VAE runs train at lr 1e-3 (2e-4 underfits in ONE_CLASS_STEPS: benchmarks/README.md); other runs keep
    the family's."""
    from genlab.training.loop import new_run_configs

    assert new_run_configs("vae", {}, TrainConfig(normal_class=3), tmp_path / "a")[1].lr == 1e-3
    assert new_run_configs("vae", {}, TrainConfig(), tmp_path / "b")[1].lr == 2e-4
    assert new_run_configs("vae", {}, TrainConfig(normal_class=3, lr=5e-4), tmp_path / "c")[1].lr == 5e-4
    assert new_run_configs("gan", {}, TrainConfig(normal_class=3), tmp_path / "d")[1].lr == 2e-4


def test_one_class_runs_get_a_budget_in_steps():
    assert resolve_epochs(TrainConfig(normal_class=3), batches_per_epoch=6).epochs == -(-ONE_CLASS_STEPS // 6)
    assert resolve_epochs(TrainConfig(), batches_per_epoch=62).epochs == 5
    assert resolve_epochs(TrainConfig(normal_class=3, epochs=2), batches_per_epoch=6).epochs == 2


def test_one_class_benchmark_runs_end_to_end(tmp_path):
    out = tmp_path / "results.json"
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "one_class.py"),
        "--families",
        "vae",
        "--classes",
        "0",
        "1",
        "--steps",
        "6",
        "--out",
        str(tmp_path / "runs"),
        "--json-out",
        str(out),
        "--split",
        "val",
        "--pairs",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| vae |" in done.stdout and "mean" in done.stdout and "best standardised pairs" in done.stdout
    report = json.loads(out.read_text())
    assert [r["normal_class"] for r in report["rows"]] == [0, 1]
    for row in report["rows"]:
        assert row["steps"] == 6 and row["counts"] == {"normal": 50, "anomalous": 450} and row["split"] == "val"
        assert set(row["auroc"]) >= {"score", "stroke_error", "relative_recon_error", "latent_distance"}
        assert all(0.0 <= v <= 1.0 for v in [*row["auroc"].values(), *row["pairs_auroc"].values()])
        assert "relative_recon_error+stroke_error" in row["pairs_auroc"]
        # the VAE's primary score is stroke_error standardised: the same ranking, so the same AUROC
        assert row["auroc"]["score"] == pytest.approx(row["auroc"]["stroke_error"], abs=1e-3)
        # the contrast guard, measured on the same model: constant frames above the threshold, AUROC kept
        guard = row["guard"]
        assert guard["auroc_with_guard"] >= guard["auroc_without_guard"] - 0.005
        assert all(f["with_guard"] > guard["threshold"] for f in guard["constant_frames"].values())
    assert "contrast guard" in done.stdout and "max loss" in done.stdout


def test_a_conditional_model_is_fitted_per_class_and_calibrated_without_labels():
    """Each class gets its own latent mixture (p(z | y)); a class's latents depend only on the seed and that
    class, not on the other labels drawn with them. Calibration scores images as the service does without a label."""
    torch.manual_seed(0)
    model = build_model(tiny_config("vae", conditional=True, num_classes=2)).eval()
    result = fit_to_training_data(model, _data(64, 1, classes=2), _data(32, 2, classes=2), torch.device("cpu"), seed=0)
    prior = result["prior"]
    assert prior["kind"] == "per-class-gaussian-mixture" and len(prior["classes"]) == 2
    labels = np.array([0, 1, 1, 0])
    z = sample_latents(4, 4, 5, prior=prior, labels=labels)
    np.testing.assert_array_equal(z, sample_latents(4, 4, 5, prior=prior, labels=labels))
    np.testing.assert_array_equal(sample_latents(2, 4, 5, prior=prior, labels=np.array([0, 0])), z[[0, 3]])
    with pytest.raises(ValueError, match="label"):
        sample_latents(4, 4, 5, prior=prior)
    assert "label" not in result["calibration"]["scores"] and "score" in result["calibration"]["scores"]


CONSTANT_LEVELS = (0, 128, 255)  # black, mid-grey and white frames


def _constant_images(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.stack([torch.full(shape, level, dtype=torch.uint8) for level in CONSTANT_LEVELS])


@pytest.mark.parametrize("key", ["vae-1", "gan", "vaegan"])
def test_constant_images_are_anomalies_in_the_checkpoint_and_its_export(exports, key):
    from genlab.export.reader import open_export

    from genlab.checkpoint import load_checkpoint, model_from_checkpoint
    from genlab.data import load_split
    from genlab.thresholds import DEFAULT_PERCENTILE

    export = exports[key]
    ckpt = load_checkpoint(export.parent / f"run-{key}")
    model, cpu = model_from_checkpoint(ckpt), torch.device("cpu")
    constant = _constant_images((1, 28, 28))
    scores = score_images(model, constant, cpu)
    cut = quantile(ckpt["calibration"], "score", DEFAULT_PERCENTILE)
    assert (scores["low_contrast"] == 1.0).all() and (scores["score"] > cut + 50.0).all(), (scores["score"], cut)

    exported = open_export(export)
    onnx_scores = exported.scores(constant.numpy())
    np.testing.assert_allclose(onnx_scores["score"], scores["score"].numpy(), rtol=1e-4)
    assert (onnx_scores["score"] > quantile(exported.calibration, "score", DEFAULT_PERCENTILE)).all()

    # the held-out normal images, where the floor was fitted, are untouched by the guard
    normal = load_split("mnist-5k", "val", "data")
    normal = normal if ckpt["data"]["normal_class"] is None else normal.only_class(ckpt["data"]["normal_class"])
    assert not score_images(model, normal.images[:200], cpu)["low_contrast"].any()


def test_a_score_fit_without_a_contrast_floor_loads_with_the_guard_off(fitted):
    from genlab.models.scoring import LOW_CONTRAST_WEIGHT

    model, result = fitted
    x = model_to_uint8(torch.full((3, 1, 16, 16), -1.0))  # blank frames
    guarded = score_images(model, x, torch.device("cpu"))
    older = build_model(model.cfg).eval()
    older.load_state_dict(model.state_dict())
    older.score_fit.load({k: v for k, v in result["score_fit"].items() if k != "contrast_floor"})
    unguarded = score_images(older, x, torch.device("cpu"))
    assert not unguarded["low_contrast"].any() and (guarded["low_contrast"] == 1.0).all()
    # below the floor: the standardised score floored at 0, plus the weight per unit of low_contrast
    torch.testing.assert_close(guarded["score"], unguarded["score"].clamp_min(0.0) + LOW_CONTRAST_WEIGHT)
