"""Anomaly metrics of inspection images: each one against a plain computation written out here, and invariances."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from genlab.eval.anomaly_metrics import (
    DefectAUROC,
    ProCurve,
    image_metrics,
    maps_to_pro_curve,
    pixel_metrics,
    pro_curve_to_aupro,
)
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from genlab.errors import GenlabError

ROOT = Path(__file__).resolve().parents[1]


# -- plain reference computations ------------------------------------------------------------------
def pairwise_auroc(scores: np.ndarray, is_positive: np.ndarray) -> float:
    """The share of (positive, negative) pairs ranked right, ties counting one half."""
    pos, neg = scores[is_positive][:, None], scores[~is_positive][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def brute_f1(scores: np.ndarray, is_positive: np.ndarray, threshold: float) -> float:
    flagged = scores > threshold
    tp, fp, fn = (flagged & is_positive).sum(), (flagged & ~is_positive).sum(), (~flagged & is_positive).sum()
    return 2 * tp / (2 * tp + fp + fn)


def brute_f1_max(scores: np.ndarray, is_positive: np.ndarray) -> float:
    """The best F1 over every way of flagging score > t: t below all scores, or at each distinct score."""
    return max(brute_f1(scores, is_positive, t) for t in [-np.inf, *np.unique(scores)])


def plain_pro_curve(maps: np.ndarray, masks: np.ndarray) -> list[tuple[float, float]]:
    """The PRO curve point by point: 8-connected regions per image, flagged = score >= t at every distinct t."""
    regions, defect_free = [], []
    for scores, mask in zip(maps, masks):
        labeled, n = ndimage.label(mask, np.ones((3, 3), int))
        regions += [scores[labeled == k] for k in range(1, n + 1)]
        defect_free.append(scores[labeled == 0])
    free = np.concatenate(defect_free)
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        points.append((float(np.mean(free >= t)), float(np.mean([np.mean(r >= t) for r in regions]))))
    return points


def plain_aupro(points: list[tuple[float, float]], limit: float) -> float:
    """Trapezoids up to ``limit``, the segment crossing it cut there by linear interpolation, / limit."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= limit:
            break
        if x1 > limit:
            x1, y1 = limit, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def blobs(rng: np.random.Generator, n: int, size: int, per_image: int) -> np.ndarray:
    """Masks [n, size, size] with up to ``per_image`` random rectangles each; image 0 stays defect-free."""
    masks = np.zeros((n, size, size), bool)
    for i in range(1, n):
        for _ in range(per_image):
            y, x = rng.integers(0, size - 2, 2)
            h, w = rng.integers(1, size // 3, 2)
            masks[i, y : y + h, x : x + w] = True
    return masks


# -- image level ----------------------------------------------------------------------------------
GOOD = [0.1, 0.2, 0.3, 0.4]
SCRATCH = [0.35, 0.9]
DENT = [0.15, 0.5]


def hand_images() -> tuple[np.ndarray, np.ndarray, list[str]]:
    scores = np.array(GOOD + SCRATCH + DENT)
    labels = np.array([0] * 4 + [1] * 4)
    return scores, labels, ["good"] * 4 + ["scratch"] * 2 + ["dent"] * 2


def test_image_metrics_on_a_hand_computed_case():
    scores, labels, types = hand_images()
    got = image_metrics(scores, labels, types, threshold=0.3)
    # scratch vs good: 0.35 beats 3 of 4, 0.9 beats 4 -> 7/8; dent: 0.15 beats 1, 0.5 beats 4 -> 5/8; all: 12/16
    assert got.auroc == pytest.approx(12 / 16)
    dent, scratch = DefectAUROC("dent", 2, pytest.approx(5 / 8)), DefectAUROC("scratch", 2, pytest.approx(7 / 8))
    assert got.defects == (dent, scratch)
    assert got.defect_auroc("scratch") == pytest.approx(7 / 8) and got.defect_types == ("dent", "scratch")
    # ranked 0.9D 0.5D 0.4G 0.35D | 0.3G 0.2G 0.15D 0.1G: flagging the top four gives tp 3, fp 1, fn 1 -> F1 6/8,
    # the best cut; the threshold sits midway between 0.35 (lowest flagged) and 0.3 (highest unflagged)
    assert got.f1_max == pytest.approx(0.75) and got.f1_threshold == pytest.approx(0.325)
    # score > 0.3: good 0.4 (1 of 4); defective 0.35, 0.9, 0.5 (3 of 4)
    assert (got.threshold, got.fpr_at_threshold, got.tpr_at_threshold) == (0.3, 0.25, 0.75)
    assert (got.good_images, got.defective_images) == (4, 4) and type(got.defects[0].defect_type) is str
    # the best F1 flags every image (tp 2, fp 1 -> 4/5): the threshold lies just below the lowest score
    every = image_metrics(np.array([0.5, 0.1, 0.9]), np.array([0, 1, 1]), ["good", "dent", "dent"])
    assert every.f1_max == pytest.approx(0.8) and every.f1_threshold < 0.1 and every.f1_threshold == pytest.approx(0.1)
    with pytest.raises(GenlabError, match="no defective image has defect type 'crack'"):
        got.defect_auroc("crack")


def test_image_metrics_against_plain_computations_on_random_scores():
    rng = np.random.default_rng(0)
    types = np.array(["good"] * 40 + ["crack"] * 15 + ["hole"] * 25 + ["print"] * 5)
    labels = types != "good"
    # rounded to a coarse grid so that ties occur, within and across classes
    scores = np.round(rng.normal(size=types.size) + 0.8 * labels, 1)
    got = image_metrics(scores, labels.astype(np.uint8), types.tolist(), threshold=0.5)
    assert got.auroc == pytest.approx(pairwise_auroc(scores, labels), abs=1e-12)
    assert got.f1_max == pytest.approx(brute_f1_max(scores, labels), abs=1e-12)
    assert brute_f1(scores, labels, got.f1_threshold) == pytest.approx(got.f1_max, abs=1e-12)
    for name in ("crack", "hole", "print"):
        subset = (types == name) | ~labels
        assert got.defect_auroc(name) == pytest.approx(pairwise_auroc(scores[subset], labels[subset]), abs=1e-12)
        assert got.defect_auroc(name) == pytest.approx(roc_auc_score(labels[subset], scores[subset]), abs=1e-12)
    assert got.fpr_at_threshold == pytest.approx(np.mean(scores[~labels] > 0.5))
    assert got.tpr_at_threshold == pytest.approx(np.mean(scores[labels] > 0.5))


def test_image_metrics_with_one_class_only():
    only_good = image_metrics(np.array([0.1, 0.5, 0.9]), np.zeros(3), ["good"] * 3, threshold=0.4)
    assert (only_good.auroc, only_good.f1_max, only_good.f1_threshold, only_good.defects) == (None, None, None, ())
    assert only_good.fpr_at_threshold == pytest.approx(2 / 3) and only_good.tpr_at_threshold is None
    only_bad = image_metrics(np.array([0.1, 0.5, 0.9]), np.ones(3), ["dent", "dent", "cut"], threshold=0.4)
    assert (only_bad.auroc, only_bad.f1_max, only_bad.fpr_at_threshold) == (None, None, None)
    assert only_bad.defects == (DefectAUROC("cut", 1, None), DefectAUROC("dent", 2, None))
    assert only_bad.tpr_at_threshold == pytest.approx(2 / 3)
    no_threshold = image_metrics(*hand_images())
    assert (no_threshold.threshold, no_threshold.fpr_at_threshold, no_threshold.tpr_at_threshold) == (None,) * 3


def test_image_metrics_refusals():
    scores, labels, types = hand_images()
    with pytest.raises(GenlabError, match="one entry per image"):
        image_metrics(scores, labels[:-1], types)
    with pytest.raises(GenlabError, match=r"defect types \['dent'\] label both"):
        image_metrics(scores, labels, ["dent"] + types[1:])
    with pytest.raises(GenlabError, match="scores holds 1 non-finite"):
        image_metrics(np.where(np.arange(8) == 3, np.nan, scores), labels, types)


# -- pixel level: AUPRO ---------------------------------------------------------------------------
def two_region_example() -> tuple[np.ndarray, np.ndarray]:
    """Two 2x3 images: region A (two pixels, 0.9 and 0.5) in image 0, region B (one pixel, 0.7) in image 1."""
    maps = np.array([[[0.9, 0.5, 0.3], [0.1, 0.2, 0.4]], [[0.6, 0.0, 0.05], [0.15, 0.25, 0.7]]])
    masks = np.array([[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 1]]], np.uint8)
    return maps, masks


def test_aupro_on_a_hand_computed_example():
    maps, masks = two_region_example()
    curve = maps_to_pro_curve(maps, masks)
    assert (curve.regions, curve.defect_free_pixels) == (2, 9)
    # thresholds 0.9 (A: 1/2 -> PRO 1/4), 0.7 (B: 1 -> 3/4), 0.6 (a defect-free pixel: FPR 1/9), 0.5 (A: 1 -> PRO 1),
    # then the 8 other defect-free pixels one by one: FPR 2/9 ... 9/9 at PRO 1
    expected_fpr = [0, 0, 0, 1 / 9, 1 / 9, *[k / 9 for k in range(2, 10)]]
    expected_pro = [0, 0.25, 0.75, 0.75, 1, *[1] * 8]
    np.testing.assert_allclose(curve.fpr, expected_fpr, atol=1e-15)
    np.testing.assert_allclose(curve.pro, expected_pro, atol=1e-15)
    # area to 0.3: 3/4 over [0, 1/9], then 1 over [1/9, 0.3] (the limit falls between 2/9 and 3/9, on a flat part)
    area = 0.75 / 9 + (0.3 - 1 / 9)
    assert pro_curve_to_aupro(curve, 0.3) == pytest.approx(area / 0.3, abs=1e-12)
    assert pixel_metrics(maps, masks).aupro == pytest.approx(area / 0.3, abs=1e-12)
    assert pro_curve_to_aupro(curve, 1 / 9) == pytest.approx(0.75, abs=1e-12)


def test_aupro_interpolates_a_sloped_segment_at_the_limit():
    curve = ProCurve(np.array([0.0, 0.2, 0.4, 1.0]), np.array([0.0, 0.5, 0.9, 1.0]), regions=1, defect_free_pixels=5)
    # 0.5 * 0.2 * 0.5 = 0.05 to FPR 0.2; PRO at 0.3 interpolates to 0.7: 0.1 * (0.5 + 0.7) / 2 = 0.06
    assert pro_curve_to_aupro(curve, 0.3) == pytest.approx(0.11 / 0.3, abs=1e-12)
    assert pro_curve_to_aupro(curve, 1.0) == pytest.approx(0.05 + 0.14 + 0.57, abs=1e-12)


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_equals_the_plain_computation_with_ties(limit):
    rng = np.random.default_rng(1)
    masks = blobs(rng, n=4, size=12, per_image=2)
    # scores on a grid of 11 values: ties inside regions, across regions and with defect-free pixels
    maps = np.round(rng.random(masks.shape) * 0.6 + 0.4 * masks, 1)
    curve = maps_to_pro_curve(maps, masks)
    plain = plain_pro_curve(maps, masks)
    np.testing.assert_allclose(np.c_[curve.fpr, curve.pro], plain, atol=1e-12)
    assert pixel_metrics(maps, masks, fpr_limit=limit).aupro == pytest.approx(plain_aupro(plain, limit), abs=1e-12)


def test_regions_are_8_connected():
    # two diagonal neighbours form one region (as scipy.ndimage.label with a 3x3 block of ones, the reference's)
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True
    masks[0, 3, 3] = True
    maps = np.arange(16, dtype=float).reshape(1, 4, 4)
    assert maps_to_pro_curve(maps, masks).regions == 2 and pixel_metrics(maps, masks).regions == 2
    assert pixel_metrics(maps, masks).aupro == pytest.approx(plain_aupro(plain_pro_curve(maps, masks), 0.3))
    # regions never join across images
    stacked = np.zeros((2, 2, 2), bool)
    stacked[:, 0, 0] = True
    assert pixel_metrics(np.zeros((2, 2, 2)), stacked).regions == 2


def test_aupro_of_perfect_inverted_and_transformed_maps():
    rng = np.random.default_rng(2)
    masks = blobs(rng, n=6, size=24, per_image=3)
    perfect = masks + 0.5 * rng.random(masks.shape)  # every defect pixel above every defect-free one
    assert pixel_metrics(masks.astype(float), masks).aupro == pytest.approx(1.0, abs=1e-12)
    assert pixel_metrics(perfect, masks).aupro == pytest.approx(1.0, abs=1e-12)
    assert pixel_metrics(-perfect, masks).aupro == pytest.approx(0.0, abs=1e-12)
    maps = rng.random(masks.shape) + 0.3 * masks
    base = pixel_metrics(maps, masks)
    for transformed in (np.exp(4 * maps), np.log1p(maps), maps**3):
        again = pixel_metrics(transformed, masks)
        assert again.aupro == pytest.approx(base.aupro, abs=1e-12)
        assert again.auroc == pytest.approx(base.auroc, abs=1e-12)
        assert again.f1_max == pytest.approx(base.f1_max, abs=1e-12)


def test_aupro_of_random_maps_is_half_the_limit():
    # i.i.d. scores: each region's overlap equals the FPR in expectation, so PRO(FPR) = FPR and the normalised
    # area up to a limit L is L / 2
    rng = np.random.default_rng(3)
    masks = blobs(rng, n=8, size=96, per_image=3)
    maps = rng.random(masks.shape)
    for limit in (0.3, 1.0):
        assert pixel_metrics(maps, masks, fpr_limit=limit).aupro == pytest.approx(limit / 2, abs=0.02)


# -- pixel level: AUROC, F1-max, subsampling, refusals --------------------------------------------
def test_pixel_auroc_and_f1_against_plain_computations():
    rng = np.random.default_rng(4)
    masks = blobs(rng, n=3, size=16, per_image=2)
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 2)
    got = pixel_metrics(maps, masks)
    scores, is_defect = maps.ravel(), masks.ravel()
    assert got.auroc == pytest.approx(pairwise_auroc(scores, is_defect), abs=1e-12)
    assert got.f1_max == pytest.approx(brute_f1_max(scores, is_defect), abs=1e-12)
    assert brute_f1(scores, is_defect, got.f1_threshold) == pytest.approx(got.f1_max, abs=1e-12)
    assert (got.pixels, got.pixels_scored, got.subsampled, got.fpr_limit) == (maps.size, maps.size, False, 0.3)


def test_pixel_subsample_is_deterministic_and_stratified():
    rng = np.random.default_rng(5)
    masks = blobs(rng, n=4, size=48, per_image=2)
    maps = rng.random(masks.shape) + 0.7 * masks
    full = pixel_metrics(maps, masks)
    part = pixel_metrics(maps, masks, max_pixels=2000)
    assert part == pixel_metrics(maps, masks, max_pixels=2000)
    assert (part.pixels, part.pixels_scored, part.subsampled) == (maps.size, 2000, True)
    assert part.auroc == pytest.approx(full.auroc, abs=0.03) and part.f1_max == pytest.approx(full.f1_max, abs=0.05)
    assert part.aupro == full.aupro and part.regions == full.regions  # AUPRO always uses every pixel


def test_pixel_metrics_degenerate_masks():
    maps = np.random.default_rng(6).random((2, 8, 8))
    none = pixel_metrics(maps, np.zeros(maps.shape, np.uint8))
    assert (none.auroc, none.f1_max, none.f1_threshold, none.aupro, none.regions) == (None, None, None, None, 0)
    every = pixel_metrics(maps, np.full(maps.shape, 255, np.uint8))  # 0/255 masks read as nonzero = defect
    assert (every.auroc, every.f1_max, every.aupro, every.regions) == (None, None, None, 2)
    with pytest.raises(GenlabError, match="needs a defect region and a defect-free pixel"):
        maps_to_pro_curve(maps, np.zeros(maps.shape))


def test_pixel_metrics_refusals():
    maps, masks = two_region_example()
    with pytest.raises(GenlabError, match="maps must have 3 dimensions"):
        pixel_metrics(maps[0], masks[0])
    with pytest.raises(GenlabError, match="share one shape"):
        pixel_metrics(maps, masks[:, :1])
    with pytest.raises(GenlabError, match="fpr_limit must be within"):
        pixel_metrics(maps, masks, fpr_limit=0.0)
    with pytest.raises(GenlabError, match="maps holds 1 non-finite"):
        pixel_metrics(np.where(maps == 0.9, np.inf, maps), masks)


def test_module_imports_without_torch():
    code = "import genlab.eval.anomaly_metrics, sys; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
