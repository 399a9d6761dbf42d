"""The local anomaly map (genlab.models.local_map) and the threshold check (genlab.thresholds.calibration_check)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genlab.config import ModelConfig
from genlab.errors import GenlabError
from genlab.models import build_model
from genlab.models.local_map import LOCAL_DEVIATION, LocalMap, gaussian_blur, measurements
from genlab.thresholds import MIN_CALIBRATION_IMAGES, calibration_check, unseen_false_positive_rate

SIDE = 32


def textures(n: int, seed: int) -> torch.Tensor:
    """[n, 3, SIDE, SIDE] in [-1, 1]: fine random texture around a per-image colour."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.rand(n, 3, 1, 1, generator=g) - 0.5
    return (colour + 0.4 * (torch.rand(n, 3, SIDE, SIDE, generator=g) - 0.5)).clamp(-1, 1)


def blurry(x: torch.Tensor) -> torch.Tensor:
    """What a blurry reconstruction looks like: the image blurred by 2 px."""
    return gaussian_blur(x, 2.0)


def smeared(x: torch.Tensor, box: tuple[slice, slice]) -> torch.Tensor:
    """``x`` with the patch ``box`` replaced by its blur: colours kept, texture gone."""
    out = x.clone()
    out[:, :, box[0], box[1]] = gaussian_blur(x, 3.0)[:, :, box[0], box[1]]
    return out


@pytest.fixture(scope="module")
def fitted() -> LocalMap:
    local = LocalMap(SIDE)
    normal = textures(64, seed=0)
    local.fit([measurements(normal[:40], blurry(normal[:40])), measurements(normal[40:], blurry(normal[40:]))])
    held_out = textures(16, seed=1)
    local.fit_scale(local.raw(held_out, blurry(held_out)))
    return local


def test_a_blur_keeps_a_constant_image_and_the_measurements_of_a_flat_image_are_its_floor():
    flat = torch.full((2, 3, SIDE, SIDE), 0.2)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)
    m = measurements(flat, flat)
    assert m.shape == (2, 3, SIDE, SIDE)
    assert torch.all(m[:, 0] == 0)  # no reconstruction error
    assert torch.allclose(m[:, 1:], torch.log(torch.tensor(1e-5)))  # no detail at all


def test_a_smear_that_a_blurry_reconstruction_hides_stands_out_where_it_is(fitted):
    """The case the reconstruction error misses: the smeared patch looks like the blurry reconstruction, so its
    error is smaller than the texture's, yet the map peaks inside it."""
    box = (slice(10, 22), slice(8, 20))
    normal = textures(8, seed=2)
    bad = smeared(normal, box)
    error_inside = (bad - blurry(bad)).abs()[:, :, box[0], box[1]].mean()
    assert error_inside < (normal - blurry(normal)).abs()[:, :, box[0], box[1]].mean()  # the error misses it
    maps = fitted(bad, blurry(bad))[:, 0]
    for m in maps:
        row, col = divmod(int(m.argmax()), SIDE)
        assert 10 - 3 <= row < 22 + 3 and 8 - 3 <= col < 20 + 3  # within the smoothing of the patch
    assert fitted.score(bad, blurry(bad)).min() > fitted.score(normal, blurry(normal)).max()


def test_a_scratch_stands_out_and_normal_images_stay_near_the_scale(fitted):
    normal = textures(8, seed=3)
    scratched = normal.clone()
    scratched[:, :, 16, 4:28] = 1.0  # a bright line the blurry reconstruction cannot follow
    assert fitted.score(scratched, blurry(scratched)).min() > fitted.score(normal, blurry(normal)).max()
    # 1 is the 99.9th percentile of held-out normal pixels: fresh normal images' maxima are of that order
    assert 0.3 < float(fitted.score(normal, blurry(normal)).median()) < 3.0
    shown = fitted.display(scratched, blurry(scratched))
    assert shown.dtype == torch.float32 and shown.shape == (8, 1, SIDE, SIDE)
    assert float(shown.min()) >= 0.0 and float(shown.max()) < 1.0


def test_a_model_with_a_local_map_makes_it_its_primary_score():
    cfg = ModelConfig(family="vae", image_size=SIDE, channels=3, width=8, latent_dim=4, anomaly_map="local")
    model = build_model(cfg).eval()
    assert model.score_fit.primary == (LOCAL_DEVIATION,)
    scores = model.anomaly_scores(textures(3, seed=4))
    assert LOCAL_DEVIATION in scores and set(scores) == set(model.descriptions())
    assert LOCAL_DEVIATION in model.descriptions()["score"]
    plain = build_model(ModelConfig(family="vae", image_size=SIDE, channels=3, width=8, latent_dim=4)).eval()
    assert plain.score_fit.local is None and LOCAL_DEVIATION not in plain.anomaly_scores(textures(3, seed=4))
    with pytest.raises(GenlabError, match="anomaly_map must be"):
        ModelConfig(family="vae", anomaly_map="ssim")


def test_the_unseen_false_positive_rate_is_the_leave_one_out_rate():
    rng = np.random.default_rng(0)
    for n in (2, 7, 40, 150):
        scores = rng.normal(size=n)
        by_hand = np.mean([scores[i] > np.quantile(np.delete(scores, i), 0.99) for i in range(n)])
        assert unseen_false_positive_rate(scores) == pytest.approx(by_hand)
    ties = np.zeros(30)  # every image at the threshold: none above it
    assert unseen_false_positive_rate(ties) == 0.0
    assert unseen_false_positive_rate(np.array([1.0])) is None


def test_a_threshold_on_few_images_is_warned_about():
    few = calibration_check(np.random.default_rng(1).normal(size=40))
    assert few["warning"] and "40 held-out normal images" in few["warning"]
    # left out, the largest of 40 is above the others' 99th percentile, and the second largest may be
    assert few["unseen_fpr"] in (pytest.approx(1 / 40), pytest.approx(2 / 40))
    assert "flags about 2.5%" in calibration_check(np.arange(40.0))["warning"]  # the largest of 40 distinct scores
    tied = calibration_check(np.zeros(40))  # none above the threshold: 0%, not a missing figure
    assert tied["unseen_fpr"] == 0.0 and "flags about 0.0%" in tied["warning"]
    assert "flags" not in calibration_check(np.zeros(1))["warning"]  # one image: no leave-one-out estimate
    enough = calibration_check(np.random.default_rng(1).normal(size=MIN_CALIBRATION_IMAGES))
    assert enough["warning"] is None and 0.0 <= enough["unseen_fpr"] <= 0.05


def test_the_statistics_fitted_batch_by_batch_are_those_of_all_the_images():
    normal = textures(24, seed=5)
    measured = measurements(normal, blurry(normal))
    local = LocalMap(SIDE)
    local.fit(measured[i : i + 5] for i in range(0, 24, 5))
    torch.testing.assert_close(local.local_mean, measured.mean(dim=0), atol=1e-5, rtol=1e-5)
    std = measured.std(dim=0)
    floor = 0.5 * std.flatten(1).median(dim=1).values.view(-1, 1, 1)
    torch.testing.assert_close(local.local_std, torch.maximum(std, floor), atol=1e-4, rtol=1e-4)
