"""What ``train`` and ``resume`` return: a JSON-friendly summary of the run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from genlab.training.quality_watch import WatchState

from genlab.checkpoint import Fitted, Progress
from genlab.config import ModelConfig, TrainConfig
from genlab.run_dir import BEST_CHECKPOINT, LAST_CHECKPOINT


def run_summary(
    mc: ModelConfig,
    tc: TrainConfig,
    run_dir: Path,
    world_size: int,
    at: Progress,
    stopped: str | None,
    fitted: Fitted | None,
    watch: WatchState,
    best_epoch: int | None = None,
) -> dict[str, Any]:
    """``stopped``: None (finished), "max_steps", "interrupted" or "already complete"; ``best_epoch``: the epoch
    best.pt holds once the run ended (until then, or for a run that was already complete, the epoch whose N(0, I)
    samples measured best, which best.pt holds during training); ``samples`` and ``reconstructions``: the grid's
    path, None where the run has not written it (a run stopped inside its first epoch has neither; a model without
    an encoder has no reconstructions)."""
    seconds = at.train_seconds
    images_per_s = at.step * tc.batch_size * world_size / seconds if seconds else math.nan
    return {
        "family": mc.family,
        "dataset": tc.dataset,
        "run_dir": str(run_dir),
        "checkpoint": str(run_dir / LAST_CHECKPOINT),
        "epoch": at.epoch,
        "epochs": tc.epochs,
        "step": at.step,
        "stopped": stopped,
        "train_seconds": round(seconds, 2),
        "images_per_s": round(images_per_s, 1) if not math.isnan(images_per_s) else None,
        "last_epoch": at.epoch_history[-1] if at.epoch_history else None,
        "prior_quality": None if fitted is None else fitted.prior_quality,
        # the default threshold's false-positive rate on unseen normal images, and a warning where it rests on few
        "calibration_check": None if fitted is None else fitted.calibration.get("check"),
        **{key: _written(run_dir / f"{key}.png") for key in ("samples", "reconstructions")},
        "max_steps": tc.max_steps,
        "best": None
        if watch.best_epoch is None
        else {
            "checkpoint": str(run_dir / BEST_CHECKPOINT),
            "epoch": watch.best_epoch if best_epoch is None else best_epoch,
            "lowest_n01_fd_epoch": watch.best_epoch,
            "lowest_n01_fd": watch.best_fd,
        },
        "world_size": world_size,
    }


def _written(path: Path) -> str | None:
    return str(path) if path.is_file() else None
