"""Anomaly detection, scored the standard way: AUROC, AUPRC and the calibrated threshold's TPR/FPR.

Two protocols:

- one-class (Deep SVDD, OCGAN): normal = class K of a dataset's test split, anomalies = every
  other class of that split;
- out-of-distribution: normal = the model's dataset's test split (class K only, if given),
  anomalies = another dataset's test split, converted to the model's channels and size.

An inspection set (``mvtec:PATH``, ``inspect:PATH``) is judged per image and per pixel, good images
against defective ones, by :mod:`genlab.eval.inspection`.

Anomalies are the positive class; larger scores are more anomalous. The scores are the ones the
service returns (the checkpoint's ``anomaly_scores`` or the exported score graph), and the
threshold is the model's calibrated quantile of each score on held-out normal images.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from genlab.eval.progress import Progress, Report
from genlab.eval.provenance import provenance

from genlab.errors import GenlabError
from genlab.thresholds import DEFAULT_PERCENTILE, quantile

if TYPE_CHECKING:
    from genlab.eval.inspection import InspectionResult
    from genlab.eval.source_base import ModelSource


@dataclass(frozen=True)
class AnomalySettings:
    dataset: str
    normal_class: int | None
    ood: str | None
    split: str = "test"
    data_dir: str = "data"
    percentile: float = DEFAULT_PERCENTILE

    def __post_init__(self) -> None:
        if not 0.0 <= self.percentile <= 100.0:
            raise GenlabError(f"percentile must be within 0..100, got {self.percentile}")
        if self.ood is None and self.normal_class is None:
            raise GenlabError(
                "the one-class protocol needs a normal class (--normal-class K); the model was trained on all classes, "
                "so use --ood DATASET to score another dataset as the anomalies"
            )

    @property
    def protocol(self) -> str:
        normal = f"{self.dataset}:{self.split}" + ("" if self.normal_class is None else f" class {self.normal_class}")
        if self.ood is not None:
            return f"{normal} vs {self.ood}:{self.split}"
        return f"{normal} vs other classes"


def ranking_metrics(scores: np.ndarray, is_anomaly: np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC (average precision) with anomalies as the positive class."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = np.nan_to_num(np.asarray(scores, np.float64), nan=np.inf, posinf=np.finfo(np.float64).max)
    return {
        "auroc": float(roc_auc_score(is_anomaly, scores)),
        "auprc": float(average_precision_score(is_anomaly, scores)),
    }


def threshold_rates(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float) -> dict[str, float]:
    """Flag scores above ``threshold``: the share of anomalies flagged (TPR) and of normals (FPR)."""
    flagged = np.asarray(scores, np.float64) > threshold
    is_anomaly = np.asarray(is_anomaly, bool)
    return {"tpr": float(flagged[is_anomaly].mean()), "fpr": float(flagged[~is_anomaly].mean())}


def scores_to_metrics(
    scores: dict[str, np.ndarray],
    is_anomaly: np.ndarray,
    calibration: dict[str, Any] | None,
    percentile: float,
    descriptions: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """{component: scores} -> {component: auroc, auprc, threshold, tpr, fpr, meaning}."""
    out: dict[str, dict[str, Any]] = {}
    for name, values in scores.items():
        row: dict[str, Any] = ranking_metrics(values, is_anomaly)
        calibrated = calibration is not None and name in calibration.get("scores", {})
        if calibrated:
            row["threshold"] = quantile(calibration, name, percentile)
            row.update(threshold_rates(values, is_anomaly, row["threshold"]))
        else:
            row.update(threshold=None, tpr=None, fpr=None)
        row["meaning"] = (descriptions or {}).get(name, "")
        out[name] = row
    return out


def _check_class(data: Any, k: int) -> None:
    present = sorted(set(data.labels.tolist()))
    if k not in present:
        raise GenlabError(f"normal class {k} is not in {data.dataset}:{data.split}; classes present: {present}")


def labelled_images(settings: AnomalySettings, image_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation set as uint8 [N, C, H, W] images and a boolean is-anomaly label per image."""
    from genlab.data import dataset_spec, load_split

    channels, size, _ = image_shape
    dataset_spec(settings.dataset)  # unknown name: one clear line before any reading
    if settings.ood is not None:
        dataset_spec(settings.ood)
    data = load_split(settings.dataset, settings.split, settings.data_dir, image_size=size, channels=channels)
    if settings.normal_class is not None:
        _check_class(data, settings.normal_class)
    if settings.ood is None:
        is_anomaly = (data.labels != settings.normal_class).numpy()
        images = data.images.numpy()
    else:
        normal = data if settings.normal_class is None else data.only_class(settings.normal_class)
        other = load_split(settings.ood, settings.split, settings.data_dir, image_size=size, channels=channels)
        images = np.concatenate([normal.images.numpy(), other.images.numpy()])
        is_anomaly = np.concatenate([np.zeros(len(normal), bool), np.ones(len(other), bool)])
    if is_anomaly.all() or not is_anomaly.any():
        raise GenlabError(
            f"{settings.protocol}: needs both normal and anomalous images ({len(images)} images, "
            f"{int(is_anomaly.sum())} anomalous)"
        )
    return images, is_anomaly


def evaluate_anomaly(
    model: Any,
    dataset: str | None = None,
    normal_class: int | None = None,
    ood: str | None = None,
    split: str = "test",
    data_dir: str = "data",
    percentile: float = DEFAULT_PERCENTILE,
    batch_size: int = 256,
    on_progress: Report | None = None,
) -> dict[str, Any]:
    """Score a model (checkpoint, run dir, export dir or ModelSource) on normal vs anomalous images.

    ``dataset`` defaults to the model's own dataset and ``normal_class`` to the class it was
    trained on alone (one-class runs). Returns every setting, the counts and, per score
    component, AUROC, AUPRC and the TPR / FPR at the calibrated ``percentile`` threshold.

    An inspection set (``mvtec:PATH``, ``inspect:PATH``) without ``ood``: the ``to_json()`` of
    :func:`genlab.eval.inspection.evaluate_inspection` instead (see :func:`inspection_dataset`).
    """
    from genlab.eval.inspection import evaluate_inspection
    from genlab.eval.model_source import ensure_source, normal_class_of

    source = ensure_source(model)
    inspection = inspection_dataset(source, dataset, normal_class, ood)
    if inspection is not None:
        measured = evaluate_inspection(
            source, inspection, data_dir, percentile, split, batch_size=batch_size, on_progress=on_progress
        )
        return measured.to_json()
    settings = AnomalySettings(
        dataset=dataset or source.dataset,
        normal_class=normal_class if normal_class is not None else normal_class_of(source),
        ood=ood,
        split=split,
        data_dir=data_dir,
        percentile=float(percentile),
    )
    images, is_anomaly = labelled_images(settings, tuple(source.image_shape))
    started = time.perf_counter()
    progress = Progress(len(images), on_progress)
    scores = source.scores(images, batch_size=batch_size, desc="scoring", on_batch=progress)
    reference = {"dataset": settings.dataset, "split": settings.split, "n": len(images), "ood": settings.ood}
    components = scores_to_metrics(
        scores, is_anomaly, source.calibration, settings.percentile, source.score_descriptions
    )
    warning = one_class_warning(source, settings)
    return {
        "evaluation": "anomaly",
        "settings": dataclasses.asdict(settings),
        "protocol": settings.protocol,
        "model": dict(source.info),
        "counts": {"normal": int((~is_anomaly).sum()), "anomalous": int(is_anomaly.sum())},
        "calibrated": source.calibration is not None,
        "components": components,
        "warnings": [warning] if warning else [],
        "provenance": provenance(
            source, len(images), None, source.info.get("device", "cpu"), time.perf_counter() - started, reference
        ),
    }


def inspection_dataset(
    source: ModelSource, dataset: str | None, normal_class: int | None, ood: str | None
) -> str | None:
    """The inspection set (``mvtec:PATH``, ``inspect:PATH``: ``dataset``, else the model's) that the evaluation
    judges per image and per pixel, or None for the one-class / out-of-distribution protocols (any other dataset,
    or ``ood`` given). An inspection set's normal images are its good ones, class 0: another ``normal_class`` is
    refused with one line."""
    from genlab.data import NORMAL_CLASS, is_anomaly_layout

    name = dataset or source.dataset
    if ood is not None or not is_anomaly_layout(name):
        return None
    if normal_class is not None and normal_class != NORMAL_CLASS:
        raise GenlabError(
            f"{name}: an inspection set's normal images are its good ones (class {NORMAL_CLASS}); "
            f"--normal-class {normal_class} does not apply"
        )
    return name


def one_class_warning(source: Any, settings: AnomalySettings) -> str | None:
    """Why the one-class protocol's figures mean little for this model, or None: a model not trained one-class on
    the normal class scores that class no more normal than the others (AUROC near 0.5, or below)."""
    from genlab.eval.model_source import normal_class_of

    trained = normal_class_of(source)
    if settings.ood is not None or settings.normal_class is None or trained == settings.normal_class:
        return None
    what = "on all classes" if trained is None else f"one-class on class {trained}"
    return (
        f"the model was trained {what}, not one-class on class {settings.normal_class}: the one-class protocol "
        f"measures how much more normal class {settings.normal_class} looks than the others, which such a model has "
        f"no reason to make it (expect AUROC near 0.5); train with --normal-class {settings.normal_class}, or use --ood"
    )


def result_name(result: dict[str, Any]) -> str:
    """The file name a result is saved under, built from every setting that changes it."""
    s = result["settings"]
    normal = "all" if s["normal_class"] is None else f"c{s['normal_class']}"
    against = f"ood-{s['ood']}" if s["ood"] else "rest"
    return f"anomaly-{s['dataset']}-{s['split']}-{normal}-vs-{against}-p{s['percentile']:g}"


def save_inspection(result: InspectionResult, run_dir: str | os.PathLike[str]) -> dict[str, str | None]:
    """Keep ``result`` beside its run: ``RUN_DIR/eval/<result name>.json`` and, where it has maps, the figure of its
    highest-scored images (:func:`genlab.eval.worst_maps.figure_path`); without maps, a figure an earlier evaluation
    on the same dataset left there is removed, so the figure beside a run is always that of its latest result.
    -> ``{"saved_to": the JSON, "worst_figure": the figure or None}``, each written atomically."""
    from genlab.eval.results import save_result
    from genlab.eval.worst_maps import figure_path, write_worst_figure

    figure = figure_path(run_dir, result.settings.dataset)
    if result.worst is None:
        figure.unlink(missing_ok=True)
    else:
        write_worst_figure(result.worst, figure)
    data = result.to_json()
    saved = save_result(run_dir, result_name(data), data)
    return {"saved_to": str(saved), "worst_figure": None if result.worst is None else str(figure)}


def summary_line(result: dict[str, Any]) -> str:
    """One line per component for the terminal."""
    lines = [
        f"anomaly {result['protocol']} ({result['counts']['normal']} normal, "
        f"{result['counts']['anomalous']} anomalous):"
    ]
    p = result["settings"]["percentile"]
    for name, row in result["components"].items():
        at = (
            f"; at p{p:g} threshold {row['threshold']:.4g}: TPR {row['tpr']:.3f}, FPR {row['fpr']:.3f}"
            if row["threshold"] is not None
            else "; no calibration"
        )
        lines.append(f"  {name}: AUROC {row['auroc']:.4f}, AUPRC {row['auprc']:.4f}{at}")
    return "\n".join(lines)
