"""Anomaly detection on inspection sets (``mvtec:PATH``, ``inspect:PATH``), judged per image and per pixel.

The evaluation set is the dataset's ``test`` split: its good (``mvtec:``) or normal (``inspect:``) images are the
negatives (label 0), every defective image a positive. For every score component (the scores the service returns)
:func:`genlab.eval.anomaly_metrics.image_metrics` gives image AUROC, F1-max, AUROC per defect type and, at the
model's calibrated threshold (the ``percentile`` quantile of the component on held-out normal images, stored with
the model), the FPR on the good images and the TPR on the defective ones. Nothing here picks a threshold or a score
from the test images; F1-max is the best F1 over every threshold and says so by its name.

Where the dataset has masks and the model gives anomaly maps (a model with an encoder, as a checkpoint or an
export; a served model gives none), :func:`genlab.eval.anomaly_metrics.pixel_metrics` judges the map: the anomaly
map (:data:`genlab.measures.ANOMALY_MAP_MEANING`, [N, C, H, W]) averaged over channels to [N, H, W] against the
masks: pixel AUROC, pixel F1-max and AUPRO up to FPR 0.3. The images and masks are read at the model's image size,
so map and mask have one size; a map of another size than its mask is resized to the mask's (bilinear, PIL) before
it is scored, and the result records the size it had.

:func:`genlab.eval.anomaly.save_inspection` keeps a result beside its run (``RUN_DIR/eval/*.json``, read back by
:meth:`InspectionResult.from_json`) and, where there were maps, the figure of the highest-scored images with their
maps (:mod:`genlab.eval.worst_maps`).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from genlab.eval.anomaly_metrics import (
    DEFAULT_FPR_LIMIT,
    DefectAUROC,
    ImageMetrics,
    PixelMetrics,
    image_metrics,
    pixel_metrics,
)
from genlab.eval.batches import in_batches
from genlab.eval.progress import Progress, Report
from genlab.eval.provenance import provenance
from genlab.eval.source_base import ModelSource
from genlab.eval.worst_maps import WORST_K, WorstImages, pick_worst

from genlab.data import NORMAL_CLASS, is_anomaly_layout
from genlab.errors import GenlabError
from genlab.imageio import resize_map
from genlab.thresholds import DEFAULT_PERCENTILE, quantile

if TYPE_CHECKING:
    from genlab.data import ImageData

SPLIT = "test"  # the only split holding defective images
PRIMARY = "score"  # the primary score component, which every registered family gives


def is_inspection_result(result: dict[str, Any]) -> bool:
    """Whether a saved result is an :class:`InspectionResult`'s ``to_json()``: an anomaly result on an inspection set
    without ``ood`` (with it, the out-of-distribution protocol judged the set)."""
    if result.get("evaluation") != "anomaly":
        return False
    return result["settings"]["ood"] is None and is_anomaly_layout(result["settings"]["dataset"])


@dataclass(frozen=True)
class InspectionSettings:
    dataset: str
    split: str = SPLIT
    data_dir: str = "data"
    percentile: float = DEFAULT_PERCENTILE
    fpr_limit: float = DEFAULT_FPR_LIMIT

    def __post_init__(self) -> None:
        if not is_anomaly_layout(self.dataset):
            raise GenlabError(f"{self.dataset} is not an inspection set (mvtec:PATH or inspect:PATH)")
        if self.split != SPLIT:
            raise GenlabError(
                f"{self.dataset}: an inspection set is evaluated on its {SPLIT} split, the only one with defective "
                f"images; got --split {self.split}"
            )
        if not 0.0 <= self.percentile <= 100.0:
            raise GenlabError(f"percentile must be within 0..100, got {self.percentile}")

    @property
    def protocol(self) -> str:
        return f"{self.dataset}:{self.split} good vs defective"


@dataclass(frozen=True)
class ComponentMetrics:
    """One score component's image metrics, with what the component means."""

    name: str
    meaning: str
    image: ImageMetrics


@dataclass(frozen=True)
class MapMetrics:
    """The anomaly map's pixel metrics against the masks, or why there are none (``pixel`` None, ``missing`` says)."""

    pixel: PixelMetrics | None
    missing: str | None  # why there are no pixel metrics
    map_size: tuple[int, int] | None  # (H, W) of the model's maps
    mask_size: tuple[int, int] | None  # (H, W) of the masks the maps are scored against

    @property
    def resized(self) -> bool:
        return self.map_size is not None and self.map_size != self.mask_size


@dataclass(frozen=True)
class InspectionResult:
    settings: InspectionSettings
    model: dict[str, Any]  # the source's description (ModelSource.info)
    defect_counts: tuple[tuple[str, int], ...]  # (defect type, images), sorted; the good images are not among them
    good_images: int
    calibrated: bool
    components: tuple[ComponentMetrics, ...]
    maps: MapMetrics
    provenance: dict[str, Any]
    # the highest-scored images with their maps, for the figure anomaly.save_inspection writes; not in the JSON (None
    # without maps, and in a result read back by from_json)
    worst: WorstImages | None = field(default=None, compare=False, repr=False)

    @property
    def defective_images(self) -> int:
        return sum(n for _, n in self.defect_counts)

    def component(self, name: str) -> ComponentMetrics:
        for row in self.components:
            if row.name == name:
                return row
        raise GenlabError(f"no score component {name!r}; present: {[row.name for row in self.components]}")

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-able data, in the shape of the other ``genlab eval anomaly`` results (``settings``,
        ``protocol``, ``counts``, ``components`` with ``auroc``, ``threshold``, ``tpr`` and ``fpr``), plus F1-max and
        per-defect AUROC per component and the ``pixel`` metrics."""
        components = {}
        for row in self.components:
            m = row.image
            components[row.name] = {
                "auroc": m.auroc,
                "f1_max": m.f1_max,
                "f1_threshold": m.f1_threshold,
                "defects": {d.defect_type: d.auroc for d in m.defects},
                "threshold": m.threshold,
                "fpr": m.fpr_at_threshold,
                "tpr": m.tpr_at_threshold,
                "meaning": row.meaning,
            }
        maps = self.maps
        pixel = None
        if maps.pixel is not None:
            pixel = {
                **asdict(maps.pixel),
                "map_size": list(maps.map_size or ()),
                "mask_size": list(maps.mask_size or ()),
                "resized": maps.resized,
            }
        return {
            "evaluation": "anomaly",
            "protocol": self.settings.protocol,
            "settings": {
                "dataset": self.settings.dataset,
                "normal_class": NORMAL_CLASS,
                "ood": None,
                "split": self.settings.split,
                "data_dir": self.settings.data_dir,
                "percentile": self.settings.percentile,
                "fpr_limit": self.settings.fpr_limit,
            },
            "model": dict(self.model),
            "counts": {
                "normal": self.good_images,
                "anomalous": self.defective_images,
                "defect_types": dict(self.defect_counts),
            },
            "calibrated": self.calibrated,
            "components": components,
            "pixel": pixel,
            "pixel_missing": maps.missing,
            "warnings": [],
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InspectionResult:
        """The result :meth:`to_json` gave (as saved in ``RUN_DIR/eval/``), typed again. Components come in the
        order of ``data["components"]`` (a saved file's are sorted by name)."""
        s = data["settings"]
        settings = InspectionSettings(
            dataset=s["dataset"],
            split=s["split"],
            data_dir=s["data_dir"],
            percentile=float(s["percentile"]),
            fpr_limit=float(s["fpr_limit"]),
        )
        counts = data["counts"]
        defect_counts = tuple(sorted((name, int(n)) for name, n in counts["defect_types"].items()))
        per_defect = dict(defect_counts)
        components = tuple(
            ComponentMetrics(
                name,
                row["meaning"],
                ImageMetrics(
                    auroc=row["auroc"],
                    f1_max=row["f1_max"],
                    f1_threshold=row["f1_threshold"],
                    defects=tuple(
                        DefectAUROC(defect, per_defect[defect], auroc)
                        for defect, auroc in sorted(row["defects"].items())
                    ),
                    threshold=row["threshold"],
                    fpr_at_threshold=row["fpr"],
                    tpr_at_threshold=row["tpr"],
                    good_images=int(counts["normal"]),
                    defective_images=int(counts["anomalous"]),
                ),
            )
            for name, row in data["components"].items()
        )
        pixel = data["pixel"]
        if pixel is None:
            maps = MapMetrics(None, data["pixel_missing"], None, None)
        else:
            maps = MapMetrics(
                PixelMetrics(**{f.name: pixel[f.name] for f in fields(PixelMetrics)}),
                None,
                _pair(pixel["map_size"]),
                _pair(pixel["mask_size"]),
            )
        return cls(
            settings=settings,
            model=dict(data["model"]),
            defect_counts=defect_counts,
            good_images=int(counts["normal"]),
            calibrated=bool(data["calibrated"]),
            components=components,
            maps=maps,
            provenance=dict(data["provenance"]),
        )

    def table(self) -> str:
        """A small table for the terminal: one row per component, then the map's pixel metrics."""
        s = self.settings
        defects = [name for name, _ in self.defect_counts]
        counts = ", ".join(f"{name} {n}" for name, n in self.defect_counts)
        header = ["component", "AUROC", "F1-max", f"FPR@p{s.percentile:g}", f"TPR@p{s.percentile:g}", *defects]
        rows = [header]
        for row in self.components:
            m = row.image
            rows.append(
                [
                    row.name,
                    _fmt(m.auroc),
                    _fmt(m.f1_max),
                    _fmt(m.fpr_at_threshold),
                    _fmt(m.tpr_at_threshold),
                    *(_fmt(m.defect_auroc(name)) for name in defects),
                ]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [
            f"anomaly {s.protocol} ({self.good_images} good, {self.defective_images} defective: {counts}); "
            f"FPR / TPR at the model's calibrated p{s.percentile:g} threshold"
            + ("" if self.calibrated else " (the model has no calibration: none)"),
            *("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows),
        ]
        p = self.maps.pixel
        if p is None:
            lines.append(f"  pixel: none ({self.maps.missing})")
        else:
            resized = f", resized from {_size(self.maps.map_size)}" if self.maps.resized else ""
            lines.append(
                f"  pixel (anomaly map, mean over channels, {_size(self.maps.mask_size)}{resized}): "
                f"AUROC {_fmt(p.auroc)}, F1-max {_fmt(p.f1_max)}, AUPRO@{p.fpr_limit:g} {_fmt(p.aupro)} "
                f"({p.regions} regions)"
            )
        return "\n".join(lines)


def _pair(size: list[int]) -> tuple[int, int]:
    height, width = size
    return int(height), int(width)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _size(size: tuple[int, int] | None) -> str:
    return "?" if size is None else f"{size[0]}x{size[1]}"


def maps_missing(source: ModelSource) -> str | None:
    """Why ``source`` gives no anomaly maps, or None when it gives them (a checkpoint or an export with an encoder)."""
    from genlab.eval.model_source import CheckpointSource, OnnxSource

    if not source.has_encoder:
        return f"a {source.family} model has no encoder, so it gives no anomaly maps"
    if not isinstance(source, (CheckpointSource, OnnxSource)):
        return f"a {source.kind} model source gives no anomaly maps; evaluate its checkpoint or export"
    return None


def images_to_maps(source: ModelSource, images: np.ndarray, batch_size: int, progress: Progress) -> np.ndarray:
    """uint8 images [N, C, H, W] -> the model's anomaly maps averaged over channels, float32 [N, H, W].

    An export's are its score graph's ``anomaly_map`` output; a checkpoint's come from the same torch module the
    exporter traces into that graph (:class:`genlab.export.onnx_export.ScoreGraph`), so both are the map of the
    reconstruction the scores compare the image with."""
    from genlab.eval.model_source import CheckpointSource, OnnxSource

    if isinstance(source, OnnxSource):
        from genlab.export.reader import ANOMALY_MAP

        def batch(part: np.ndarray) -> np.ndarray:
            return np.asarray(source.export.scores(part, maps=True)[ANOMALY_MAP], np.float32).mean(axis=1)

    elif isinstance(source, CheckpointSource):
        import torch
        from genlab.export.onnx_export import ScoreGraph

        graph = ScoreGraph(source.model, [], maps=True).eval()

        def batch(part: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = graph(torch.from_numpy(np.ascontiguousarray(part)).to(source.device))
            return out[-1].float().mean(dim=1).cpu().numpy()

    else:
        raise GenlabError(maps_missing(source) or f"{source.kind}: no anomaly maps")

    def counted(part: np.ndarray) -> np.ndarray:
        out = batch(part)
        progress(len(part))
        return out

    parts = in_batches(counted, np.ascontiguousarray(images), batch_size, desc="maps")
    return np.concatenate(parts) if parts else np.zeros((0, *images.shape[2:]), np.float32)


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 maps [N, h, w] -> [N, H, W] at ``size`` = (H, W) (:func:`genlab.imageio.resize_map`); unchanged when
    the size matches."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    return np.stack([resize_map(m, *size) for m in maps])


def scores_to_components(
    scores: dict[str, np.ndarray],
    labels: np.ndarray,
    defect_types: tuple[str, ...],
    source: ModelSource,
    percentile: float,
) -> tuple[ComponentMetrics, ...]:
    """{component: scores [N]} -> each component's image metrics, the rates taken at the model's calibrated
    ``percentile`` threshold of that component (none where the model has no calibration for it)."""
    calibration = source.calibration
    components = []
    for name, values in scores.items():
        calibrated = calibration is not None and name in calibration.get("scores", {})
        threshold = quantile(calibration, name, percentile) if calibrated else None
        metrics = image_metrics(values, labels, defect_types, threshold)
        components.append(ComponentMetrics(name, source.score_descriptions.get(name, ""), metrics))
    return tuple(components)


def maps_to_metrics(maps: np.ndarray, masks: np.ndarray, settings: InspectionSettings) -> MapMetrics:
    """Maps [N, h, w] and masks [N, H, W] -> the maps' pixel metrics, each map resized to its mask's size first."""
    map_size = (int(maps.shape[1]), int(maps.shape[2]))
    mask_size = (int(masks.shape[1]), int(masks.shape[2]))
    pixel = pixel_metrics(resize_maps(maps, mask_size), masks, fpr_limit=settings.fpr_limit)
    return MapMetrics(pixel, None, map_size, mask_size)


def read_test_split(settings: InspectionSettings, image_shape: tuple[int, int, int]) -> ImageData:
    """The inspection set's test split (``ImageData``: images, labels, defect types, masks) at the model's image size
    and channels; one line when it lacks good or defective images."""
    from genlab.data import load_split

    channels, size, _ = image_shape
    data = load_split(settings.dataset, settings.split, settings.data_dir, image_size=size, channels=channels)
    defective = int(data.labels.sum())
    if data.defect_types is None or defective in (0, len(data)):
        raise GenlabError(
            f"{settings.protocol}: needs good and defective images with defect types ({len(data)} images, "
            f"{defective} defective)"
        )
    return data


def evaluate_inspection(
    model: str | os.PathLike[str] | ModelSource,
    dataset: str | None = None,
    data_dir: str = "data",
    percentile: float = DEFAULT_PERCENTILE,
    split: str = SPLIT,
    batch_size: int = 256,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    on_progress: Report | None = None,
    worst: int = WORST_K,
) -> InspectionResult:
    """Score a model (checkpoint, run dir, export dir or ModelSource) on an inspection set's test split.

    ``dataset`` defaults to the model's own. The images (and masks) are read at the model's image size and channels.
    Where there are maps, the result keeps the ``worst`` (0: none) highest-scored defective and good images by the
    primary score, with their maps resized to the images' size, for the figure
    :func:`genlab.eval.anomaly.save_inspection` writes.
    """
    from genlab.eval.model_source import ensure_source

    source = ensure_source(model)
    settings = InspectionSettings(
        dataset=dataset or source.dataset,
        split=split,
        data_dir=data_dir,
        percentile=float(percentile),
        fpr_limit=float(fpr_limit),
    )
    data = read_test_split(settings, tuple(source.image_shape))
    images, labels = data.images.numpy(), data.labels.numpy()
    missing = "the dataset has no masks" if data.masks is None else maps_missing(source)
    started = time.perf_counter()
    progress = Progress(len(images) * (1 if missing else 2), on_progress)
    scores = source.scores(images, batch_size=batch_size, desc="scoring", on_batch=progress)

    components = scores_to_components(scores, labels, data.defect_types, source, settings.percentile)
    map_metrics, highest = MapMetrics(None, missing, None, None), None
    if missing is None:
        maps = images_to_maps(source, images, batch_size, progress)
        map_metrics = maps_to_metrics(maps, data.masks.numpy(), settings)
        if worst > 0:
            threshold = next(c.image.threshold for c in components if c.name == PRIMARY)
            sized = resize_maps(maps, tuple(images.shape[2:]))
            highest = pick_worst(data, sized, scores[PRIMARY], PRIMARY, threshold, worst)

    defective = [t for t, label in zip(data.defect_types, labels) if label]
    reference = {"dataset": settings.dataset, "split": settings.split, "n": len(images), "ood": None}
    return InspectionResult(
        settings=settings,
        model=dict(source.info),
        defect_counts=tuple((t, defective.count(t)) for t in sorted(set(defective))),
        good_images=int((labels == 0).sum()),
        calibrated=source.calibration is not None,
        components=components,
        maps=map_metrics,
        provenance=provenance(
            source, len(images), None, source.info.get("device", "cpu"), time.perf_counter() - started, reference
        ),
        worst=highest,
    )
