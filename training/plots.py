"""Loss curves from the metrics log, as one PNG."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from genlab.files import atomic_write_bytes


def plot_loss_curves(records: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("kind") == "step"]
    names = [k for k in (steps[0] if steps else {}) if k not in ("kind", "epoch", "step", "img_per_s")]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        xs = [r["step"] for r in steps if name in r]
        ys = [r[name] for r in steps if name in r]
        ax.plot(xs, ys, lw=0.6, alpha=0.35, color="C0")
        window = max(1, len(ys) // 50)
        if window > 1:
            smooth = [sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1]) for i in range(len(ys))]
            ax.plot(xs, smooth, lw=1.4, color="C0")
        ax.set_title(name)
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
