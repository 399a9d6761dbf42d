"""Loss curves and per-epoch sample quality from the metrics log, as one PNG: a grid of panels, one per series
that changes (a constant series, e.g. a balancing switch that never flipped, is left out)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from genlab.files import atomic_write_bytes
from genlab.quality import N01_SAMPLES

QUALITY_PANELS = {
    "quality_fd": f"FD of {N01_SAMPLES} (lower is better)",
    "quality_confident": f"confident share of {N01_SAMPLES}",
    "quality_class_entropy": f"class entropy of {N01_SAMPLES}",
}
COLUMNS = 3  # panels per row
PANEL_SIZE = (4.2, 3.0)  # inches per panel, at 100 dpi


def changing(values: list[float]) -> bool:
    """Whether a series has more than one value (a flat one says nothing in a plot)."""
    finite = [v for v in values if math.isfinite(v)]
    return len(finite) > 1 and max(finite) - min(finite) > 1e-12 * max(1.0, abs(max(finite)))


def _smoothed(ys: list[float]) -> list[float] | None:
    window = max(1, len(ys) // 50)
    if window == 1:
        return None
    return [sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1]) for i in range(len(ys))]


def series(records: list[dict[str, Any]]) -> list[tuple[str, list[float], list[float], bool]]:
    """(title, steps, values, per_epoch) of every series worth a panel: step losses, then per-epoch quality."""
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    names = list(dict.fromkeys(k for r in steps for k in r if k not in ("kind", "epoch", "step", "img_per_s")))
    out = [
        (name, [r["step"] for r in steps if name in r], [r[name] for r in steps if name in r], False) for name in names
    ]
    out += [
        (title, [r["step"] for r in epochs if name in r], [r[name] for r in epochs if name in r], True)
        for name, title in QUALITY_PANELS.items()
    ]
    return [s for s in out if changing(s[2])]


def plot_loss_curves(records: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = series(records)
    columns = max(1, min(COLUMNS, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows + 0.4), squeeze=False
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (name, xs, ys, per_epoch) in zip(axes.flat, panels):
        if per_epoch:
            ax.plot(xs, ys, "o-", ms=3, color="C1")
        else:
            ax.plot(xs, ys, lw=0.6, alpha=0.35, color="C0")
            smooth = _smoothed(ys)
            if smooth is not None:
                ax.plot(xs, smooth, lw=1.4, color="C0")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
