"""Loss curves and per-epoch sample quality from the metrics log, as one PNG."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from genlab.files import atomic_write_bytes

QUALITY_PANELS = {
    "quality_fd": "sample FD (lower is better)",
    "quality_confident": "confident samples",
    "quality_class_entropy": "class entropy",
}


def plot_loss_curves(records: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    names = [k for k in (steps[0] if steps else {}) if k not in ("kind", "epoch", "step", "img_per_s")]
    quality = [k for k in QUALITY_PANELS if any(k in r for r in epochs)]  # measured at the end of epochs
    panels = max(1, len(names) + len(quality))
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 2.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        xs = [r["step"] for r in steps if name in r]
        ys = [r[name] for r in steps if name in r]
        ax.plot(xs, ys, lw=0.6, alpha=0.35, color="C0")
        window = max(1, len(ys) // 50)
        if window > 1:
            smooth = [
                sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1])
                for i in range(len(ys))
            ]
            ax.plot(xs, smooth, lw=1.4, color="C0")
        ax.set_title(name)
        ax.set_xlabel("step")
    for ax, name in zip(axes[0][len(names) :], quality, strict=False):
        ax.plot(
            [r["step"] for r in epochs if name in r], [r[name] for r in epochs if name in r], "o-", ms=3, color="C1"
        )
        ax.set_title(QUALITY_PANELS[name])
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
