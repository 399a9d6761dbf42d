"""The end of an epoch: its record, and the line it prints."""

from __future__ import annotations

from typing import Any

from genlab.checkpoint import Progress
from genlab.quality import N01_SAMPLES
from genlab.quality import summary as quality_summary

UNPRINTED = ("epoch", "step", "train_seconds")


def close_epoch(at: Progress) -> dict[str, Any]:
    """Close the open epoch of ``at`` and open the next; returns the epoch's record (its mean step losses)."""
    means = {n: s / max(at.epoch_count, 1) for n, s in at.epoch_sums.items()}
    at.epoch += 1
    at.batch = 0
    at.epoch_sums, at.epoch_count = {}, 0
    return {"epoch": at.epoch, "step": at.step, **means, "train_seconds": at.train_seconds}


def epoch_line(record: dict[str, Any], epochs: int, best: bool) -> str:
    """E.g. 'epoch 3/20: loss 112.4, ...; N(0, I) samples: fd 12.3, ... (best)'."""
    losses = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in UNPRINTED and not k.startswith("quality_"))
    measured = {k[len("quality_") :]: v for k, v in record.items() if k.startswith("quality_")}
    quality = quality_summary(measured, N01_SAMPLES)
    return (
        f"epoch {record['epoch']}/{epochs}: {losses}"
        + (f"; {quality}" if quality else "")
        + (" (best)" if best else "")
    )
