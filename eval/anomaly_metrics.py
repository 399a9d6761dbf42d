"""Anomaly detection on inspection images, judged the MVTec AD way: per image and per pixel.

Per image (:func:`image_metrics`): AUROC, F1-max, AUROC per defect type (that defect's images against
every good image) and the calibrated threshold's false- and true-positive rates. Per pixel
(:func:`pixel_metrics`): AUROC, F1-max and AUPRO, the normalised area under the per-region-overlap
curve up to a false-positive rate of 0.3.

AUPRO follows Bergmann et al., "The MVTec Anomaly Detection Dataset" (IJCV 2021), as the MVTec AD
evaluation scripts compute it (``compute_pro`` and ``trapezoid``) and anomalib's ``AUPRO`` metric does:

- each ground-truth mask splits into 8-connected regions (``scipy.ndimage.label`` with a 3x3 block of
  ones in the reference scripts; OpenCV's and kornia's labelling in anomalib, also 8-connected);
- at a threshold t, a pixel is flagged when its score is >= t; the per-region overlap PRO(t) is the
  mean, over every region of every image, of the share of the region's pixels flagged, and FPR(t) is
  the share of flagged pixels among all defect-free pixels (those of good images included);
- the thresholds are every distinct score, so the curve is exact: no grid, no binning error. The
  curve runs from (0, 0) through one point per distinct score to (1, 1);
- AUPRO is the trapezoidal area under PRO over FPR in [0, fpr_limit], the curve interpolated linearly
  at fpr_limit, divided by fpr_limit: 1.0 for a perfect map. For i.i.d. random maps every region's
  overlap equals the FPR in expectation, PRO(FPR) = FPR, so AUPRO is about fpr_limit / 2 (0.15).

Pixel AUROC and F1-max are scikit-learn's over every pixel of every image, as in the reference
scripts; above ``max_pixels`` pixels they use a fixed-seed subsample (same share of defect and
defect-free pixels), and :class:`PixelMetrics` says how many pixels they saw. AUPRO always uses
every pixel: a subsample would shrink or drop small regions. It costs about 50 bytes per pixel
(one sort and its cumulative sums).

Defective images and defect pixels are the positive class; larger scores are more anomalous. A
reported threshold follows genlab's rule, the service's ``is_anomaly``: flagged when score > threshold.
A metric that needs both classes is None when one is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from genlab.errors import GenlabError

DEFAULT_FPR_LIMIT = 0.3
# sklearn's AUROC and PR curve hold several float64 copies of their input: about 1 GiB at this size
DEFAULT_MAX_PIXELS = 10_000_000
SUBSAMPLE_SEED = 0
# 8-connectivity within an image, none across the image axis: one ndimage.label call for the whole stack
_REGION_STRUCTURE = np.zeros((3, 3, 3), bool)
_REGION_STRUCTURE[1] = True


@dataclass(frozen=True)
class DefectAUROC:
    """One defect type's images against every good image."""

    defect_type: str
    images: int
    auroc: float | None  # None without good images


@dataclass(frozen=True)
class ImageMetrics:
    auroc: float | None
    f1_max: float | None
    # flagging score > f1_threshold gives f1_max on these scores (midway between the lowest flagged score and the
    # highest unflagged one)
    f1_threshold: float | None
    defects: tuple[DefectAUROC, ...]  # sorted by defect type
    threshold: float | None  # the calibrated threshold the two rates below are taken at
    fpr_at_threshold: float | None  # share of good images with score > threshold
    tpr_at_threshold: float | None  # share of defective images with score > threshold
    good_images: int
    defective_images: int

    def defect_auroc(self, defect_type: str) -> float | None:
        for row in self.defects:
            if row.defect_type == defect_type:
                return row.auroc
        raise GenlabError(f"no defective image has defect type {defect_type!r}; present: {self.defect_types}")

    @property
    def defect_types(self) -> tuple[str, ...]:
        return tuple(row.defect_type for row in self.defects)


@dataclass(frozen=True)
class PixelMetrics:
    auroc: float | None
    f1_max: float | None
    f1_threshold: float | None  # flagging score > f1_threshold gives f1_max on the scored pixels
    aupro: float | None  # None without a defect region or without a defect-free pixel
    fpr_limit: float
    regions: int  # 8-connected ground-truth regions over all images
    pixels: int  # every pixel of every image (AUPRO's)
    pixels_scored: int  # the pixels AUROC and F1-max saw: all of them, or a subsample of max_pixels

    @property
    def subsampled(self) -> bool:
        return self.pixels_scored < self.pixels


@dataclass(frozen=True, eq=False)
class ProCurve:
    """The PRO curve: ``pro[i]`` against ``fpr[i]``, both non-decreasing from 0 to 1, one point per distinct score."""

    fpr: np.ndarray
    pro: np.ndarray
    regions: int
    defect_free_pixels: int


def image_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    defect_types: Sequence[str],
    threshold: float | None = None,
) -> ImageMetrics:
    """Per-image scores [N], labels [N] (nonzero = defective) and defect types [N] -> :class:`ImageMetrics`.

    A defect type names the defective images that share it; the good images' names are not used, but
    no name may label both a good and a defective image.
    """
    scores = _finite("scores", scores, ndim=1)
    is_defective = np.asarray(labels) != 0
    types = np.array([str(name) for name in defect_types], dtype=str)
    if is_defective.shape != scores.shape or types.shape != scores.shape:
        raise GenlabError(
            f"scores, labels and defect_types must have one entry per image; got {scores.shape[0]}, "
            f"{is_defective.size} and {types.size}"
        )
    both = sorted(set(types[is_defective].tolist()) & set(types[~is_defective].tolist()))
    if both:
        raise GenlabError(f"defect types {both} label both good and defective images")

    good, defective = int((~is_defective).sum()), int(is_defective.sum())
    defects = []
    for name in sorted(set(types[is_defective].tolist())):
        subset = (types == name) | ~is_defective
        defects.append(DefectAUROC(name, int((types == name).sum()), _auroc(is_defective[subset], scores[subset])))
    f1_max, f1_threshold = _f1_max(is_defective, scores)
    flagged = None if threshold is None else scores > threshold
    return ImageMetrics(
        auroc=_auroc(is_defective, scores),
        f1_max=f1_max,
        f1_threshold=f1_threshold,
        defects=tuple(defects),
        threshold=None if threshold is None else float(threshold),
        fpr_at_threshold=None if flagged is None or good == 0 else float(flagged[~is_defective].mean()),
        tpr_at_threshold=None if flagged is None or defective == 0 else float(flagged[is_defective].mean()),
        good_images=good,
        defective_images=defective,
    )


def pixel_metrics(
    maps: np.ndarray,
    masks: np.ndarray,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PixelMetrics:
    """Anomaly maps [N, H, W] (float) and ground-truth masks [N, H, W] (nonzero = defect) -> :class:`PixelMetrics`."""
    maps, is_defect = _maps_and_masks(maps, masks)
    _check_fpr_limit(fpr_limit)
    if max_pixels < 2:
        raise GenlabError(f"max_pixels must be at least 2, got {max_pixels}")
    flat_scores, flat_defect = maps.reshape(-1), is_defect.reshape(-1)
    if flat_scores.size > max_pixels:
        keep = _stratified_subsample(flat_defect, max_pixels)
        scored, scored_defect = flat_scores[keep], flat_defect[keep]
    else:
        scored, scored_defect = flat_scores, flat_defect
    f1_max, f1_threshold = _f1_max(scored_defect, scored)

    labeled, regions = ndimage.label(is_defect, _REGION_STRUCTURE)
    aupro = None
    if regions > 0 and not flat_defect.all():
        aupro = pro_curve_to_aupro(_labeled_to_pro_curve(maps, labeled, regions), fpr_limit)
    return PixelMetrics(
        auroc=_auroc(scored_defect, scored),
        f1_max=f1_max,
        f1_threshold=f1_threshold,
        aupro=aupro,
        fpr_limit=float(fpr_limit),
        regions=int(regions),
        pixels=int(flat_scores.size),
        pixels_scored=int(scored.size),
    )


def maps_to_pro_curve(maps: np.ndarray, masks: np.ndarray) -> ProCurve:
    """Anomaly maps and ground-truth masks [N, H, W] -> the exact PRO curve (one point per distinct score)."""
    maps, is_defect = _maps_and_masks(maps, masks)
    labeled, regions = ndimage.label(is_defect, _REGION_STRUCTURE)
    return _labeled_to_pro_curve(maps, labeled, regions)


def _labeled_to_pro_curve(maps: np.ndarray, labeled: np.ndarray, regions: int) -> ProCurve:
    """Maps and their region labels (0 = defect-free, 1..regions) -> the PRO curve."""
    labeled = labeled.reshape(-1)
    sizes = np.bincount(labeled, minlength=regions + 1)
    defect_free = int(sizes[0])
    if regions == 0 or defect_free == 0:
        raise GenlabError(
            f"the PRO curve needs a defect region and a defect-free pixel; the masks hold {regions} regions "
            f"and {defect_free} defect-free pixels"
        )
    # lowering the threshold past a pixel's score adds 1 false positive (defect-free pixel) or 1/size to its
    # region's overlap: cumulative sums in descending score order give the curve at every score
    overlap_step = np.zeros(regions + 1)
    overlap_step[1:] = 1.0 / sizes[1:]
    order = np.argsort(maps.reshape(-1))[::-1]
    labeled = labeled[order]
    false_positives = np.cumsum(labeled == 0, dtype=np.int64)
    overlap = np.cumsum(overlap_step[labeled])
    del labeled
    sorted_scores = maps.reshape(-1)[order]
    del order
    # pixels of equal score pass the threshold together: keep the last point of each run of equal scores
    last_of_run = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    fpr = np.minimum(false_positives[last_of_run] / defect_free, 1.0)
    pro = np.minimum(overlap[last_of_run] / regions, 1.0)
    fpr, pro = np.concatenate(([0.0], fpr)), np.concatenate(([0.0], pro))
    fpr.flags.writeable = pro.flags.writeable = False
    return ProCurve(fpr, pro, int(regions), defect_free)


def pro_curve_to_aupro(curve: ProCurve, fpr_limit: float = DEFAULT_FPR_LIMIT) -> float:
    """The PRO curve's trapezoidal area over FPR in [0, fpr_limit], interpolated at fpr_limit, / fpr_limit."""
    _check_fpr_limit(fpr_limit)
    fpr, pro = curve.fpr, curve.pro
    inside = int(np.searchsorted(fpr, fpr_limit, side="right"))  # fpr[:inside] <= fpr_limit; fpr[0] == 0
    x, y = fpr[:inside], pro[:inside]
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
    if x[-1] < fpr_limit:  # fpr ends at 1 >= fpr_limit, so a next point exists
        x0, y0, x1, y1 = x[-1], y[-1], fpr[inside], pro[inside]
        y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        area += (fpr_limit - x0) * (y0 + y_limit) / 2
    return float(area / fpr_limit)


def _auroc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    if is_positive.all() or not is_positive.any():
        return None
    return float(roc_auc_score(is_positive, scores))


def _f1_max(is_positive: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None]:
    """The best F1 over every threshold and a threshold t reaching it with the rule score > t."""
    if is_positive.all() or not is_positive.any():
        return None, None
    precision, recall, thresholds = precision_recall_curve(is_positive, scores)
    # the curve's last point (precision 1, recall 0) has no threshold
    precision, recall = precision[:-1], recall[:-1]
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    best = int(np.argmax(f1))
    lowest_flagged = float(thresholds[best])  # scikit-learn flags score >= its threshold
    below = scores[scores < lowest_flagged]
    if below.size == 0:
        return float(f1[best]), float(np.nextafter(lowest_flagged, -np.inf))
    highest_unflagged = float(below.max())
    threshold = highest_unflagged / 2 + lowest_flagged / 2
    if not highest_unflagged <= threshold < lowest_flagged:  # adjacent floats: no midpoint between them
        threshold = highest_unflagged
    return float(f1[best]), threshold


def _stratified_subsample(is_positive: np.ndarray, size: int) -> np.ndarray:
    """Sorted indices of ``size`` elements, fixed seed, each class kept in its share (at least one of each)."""
    rng = np.random.default_rng(SUBSAMPLE_SEED)
    positives, negatives = np.flatnonzero(is_positive), np.flatnonzero(~is_positive)
    take_positive = min(positives.size, max(int(positives.size > 0), round(size * positives.size / is_positive.size)))
    take_negative = min(negatives.size, size - take_positive)
    chosen = np.concatenate(
        (rng.choice(positives, take_positive, replace=False), rng.choice(negatives, take_negative, replace=False))
    )
    chosen.sort()
    return chosen


def _finite(name: str, values: np.ndarray, ndim: int) -> np.ndarray:
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    if array.ndim != ndim:
        raise GenlabError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    bad = int(array.size - np.isfinite(array).sum())
    if bad:
        raise GenlabError(f"{name} holds {bad} non-finite values (nan or inf)")
    return array


def _maps_and_masks(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = _finite("maps", maps, ndim=3)
    is_defect = np.asarray(masks) != 0
    if is_defect.shape != scores.shape:
        raise GenlabError(f"maps and masks must share one shape [N, H, W]; got {scores.shape} and {is_defect.shape}")
    return scores, is_defect


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise GenlabError(f"fpr_limit must be within (0, 1], got {fpr_limit}")
