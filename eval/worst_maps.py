"""The highest-scored images of an inspection set with their anomaly maps, as one figure beside the saved result:
``RUN_DIR/eval/inspection-<dataset>-worst.png`` (the dataset by its :func:`genlab.data.published_name`).

Two groups of rows, each highest score first: the ``k`` highest-scored defective images, then the ``k``
highest-scored good images (the false alarms a user wants to see first). A row shows the image as the model scored
it (at the size it was read at, colour kept), the anomaly map as a heat overlay on it with the ground-truth mask's
outline, and the mask on the image; its label names the defect type (a good image's: its folder's name, ``good``),
the score and whether the calibrated threshold flags it. Each map is resized to its image's size by
:func:`genlab.eval.inspection.resize_maps`, the resize the pixel metrics use, and every map in the figure shares one
colour scale: the min..max of the maps shown, stated in the title and on the colour bar.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from genlab.errors import GenlabError
from genlab.files import atomic_write_bytes

if TYPE_CHECKING:
    from genlab.data import ImageData

WORST_K = 6  # rows per group: defective images, good images
COLORMAP = "inferno"
OVERLAY_ALPHA = 0.55  # the heat map's opacity over the image
OUTLINE = "cyan"  # the ground-truth mask's outline and fill
# the figure's layout, in inches at DPI: a label column, three square panels per row, the colour bar, the title
DPI = 100
ROW_INCHES = 1.7
LABEL_INCHES = 1.5
COLORBAR_INCHES = 1.1
TITLE_INCHES = 1.0
BOTTOM_INCHES = 0.15
PANELS = ("image", f"anomaly map on the image\n({OVERLAY_ALPHA:.0%} opaque)", "ground-truth mask")


@dataclass(frozen=True, eq=False)
class WorstImages:
    """The rows of the figure: the ``defective`` highest-scored defective images, then the highest-scored good ones."""

    dataset: str
    score: str  # the score component that ranks them
    threshold: float | None  # its calibrated threshold: a score above it is flagged
    images: np.ndarray  # uint8 [n, C, H, W], as the model scored them
    maps: np.ndarray  # float32 [n, H, W], resized to the images' size
    masks: np.ndarray  # bool [n, H, W]
    defect_types: tuple[str, ...]  # [n]; a good image's is the name of the good folder ("good", "normal")
    scores: np.ndarray  # float64 [n]
    defective: int  # the first ``defective`` rows are defective images

    @property
    def rows(self) -> int:
        return len(self.images)

    @property
    def map_range(self) -> tuple[float, float]:
        return float(self.maps.min()), float(self.maps.max())


def highest_scored(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Scores and labels [N] (nonzero = defective) -> (indices, how many are defective): the ``k`` highest-scored
    defective images, then the ``k`` highest-scored good ones, each highest first (ties in index order)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    defective = np.asarray(labels)[order] != 0
    top_defective, top_good = order[defective][:k], order[~defective][:k]
    return np.concatenate([top_defective, top_good]), len(top_defective)


def pick_worst(
    data: ImageData, maps: np.ndarray, scores: np.ndarray, score: str, threshold: float | None, k: int = WORST_K
) -> WorstImages:
    """The test split, its maps [N, H, W] at the images' size (:func:`genlab.eval.inspection.resize_maps`) and one
    score component's values [N] -> the figure's rows."""
    if data.masks is None or data.defect_types is None:
        raise GenlabError(f"{data.dataset}: the figure of the highest-scored images needs masks and defect types")
    if tuple(maps.shape) != (len(data), *data.images.shape[2:]):
        raise GenlabError(f"maps {tuple(maps.shape)} do not match the images {tuple(data.images.shape)}")
    rows, defective = highest_scored(scores, data.labels.numpy(), k)
    return WorstImages(
        dataset=data.dataset,
        score=score,
        threshold=threshold,
        images=data.images.numpy()[rows],
        maps=np.asarray(maps[rows], np.float32),
        masks=data.masks.numpy()[rows],
        defect_types=tuple(data.defect_types[i] for i in rows),
        scores=np.asarray(scores, np.float64)[rows],
        defective=defective,
    )


def figure_path(run_dir: str | os.PathLike, dataset: str) -> Path:
    """RUN_DIR/eval/inspection-<dataset's published name>-worst.png."""
    from genlab.eval.results import result_path

    from genlab.data import published_name

    return result_path(run_dir, f"inspection-{published_name(dataset)}-worst", ".png")


def figure_pixels(rows: int) -> tuple[int, int]:
    """(width, height) in pixels of a figure of ``rows`` rows."""
    width = LABEL_INCHES + len(PANELS) * ROW_INCHES + COLORBAR_INCHES
    height = TITLE_INCHES + rows * ROW_INCHES + BOTTOM_INCHES
    return round(width * DPI), round(height * DPI)


def _row_label(worst: WorstImages, row: int) -> str:
    """The defect type, the score, and what the calibrated threshold makes of it (a flagged good image: a false
    alarm)."""
    score = float(worst.scores[row])
    verdict = ""
    if worst.threshold is not None:
        flagged = score > worst.threshold
        verdict = "\nflagged" if flagged else "\nnot flagged"
        if flagged and row >= worst.defective:
            verdict += ": false alarm"
    return f"{worst.defect_types[row]}\n{worst.score} {score:.4g}{verdict}"


def write_worst_figure(worst: WorstImages, path: str | os.PathLike) -> Path:
    """Draw the rows of ``worst`` and write them as one PNG at ``path``, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    from genlab.data import published_name

    low, high = worst.map_range
    norm = Normalize(low, high if high > low else low + 1e-12)  # a constant map: one colour, the range still stated
    width, height = (size / DPI for size in figure_pixels(worst.rows))
    fig, axes = plt.subplots(worst.rows, len(PANELS), figsize=(width, height), dpi=DPI, squeeze=False)
    top, bottom = 1 - TITLE_INCHES / height, BOTTOM_INCHES / height
    fig.subplots_adjust(
        left=LABEL_INCHES / width, right=1 - COLORBAR_INCHES / width, top=top, bottom=bottom, wspace=0.05, hspace=0.08
    )
    grey = worst.images.shape[1] == 1
    for row, (image, heat, mask) in enumerate(zip(worst.images, worst.maps, worst.masks)):
        picture = image[0] if grey else image.transpose(1, 2, 0)
        shown = {"cmap": "gray", "vmin": 0, "vmax": 255} if grey else {}
        for ax in axes[row]:
            ax.imshow(picture, interpolation="nearest", **shown)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 1].imshow(heat, cmap=COLORMAP, norm=norm, alpha=OVERLAY_ALPHA, interpolation="nearest")
        if mask.any():
            for ax in axes[row, 1:]:
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=OUTLINE, linewidths=1.0)
            fill = np.zeros((*mask.shape, 4), np.float32)
            fill[mask] = (0.0, 1.0, 1.0, 0.35)
            axes[row, 2].imshow(fill, interpolation="nearest")
        else:
            axes[row, 2].text(0.5, 0.5, "no defect", transform=axes[row, 2].transAxes, ha="center", color=OUTLINE)
        axes[row, 0].set_ylabel(_row_label(worst, row), rotation=0, ha="right", va="center", fontsize=8)
    for ax, title in zip(axes[0], PANELS):
        ax.set_title(title, fontsize=9)
    good = worst.rows - worst.defective
    fig.suptitle(
        f"{published_name(worst.dataset)}: the {worst.defective} highest-scored defective and {good} highest-scored "
        f"good images by {worst.score}\nanomaly map colour scale {low:.4g} to {high:.4g} (min..max of the maps shown)"
        + ("" if worst.threshold is None else f"; flagged: {worst.score} > {worst.threshold:.4g}"),
        fontsize=9,
        y=1 - 0.15 / height,
        va="top",
    )
    bar = fig.add_axes((1 - 0.75 * COLORBAR_INCHES / width, bottom, 0.12 / width, top - bottom))
    colorbar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=COLORMAP), cax=bar)
    colorbar.set_label(f"anomaly map (mean over channels), {low:.4g} to {high:.4g}", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
