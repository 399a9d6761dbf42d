"""Sample quality through a run: measured each epoch, the best epoch remembered, collapse noticed.

The tracked number is the Fréchet distance in the reference classifier's features (``fd``,
:mod:`genlab.quality`): an epoch whose ``fd`` is the lowest so far is the new best, and the loop
writes ``RUN_DIR/best.pt``. When ``fd`` stays above COLLAPSE_FACTOR times the best for
COLLAPSE_EPOCHS epochs in a row, the run is probably collapsing (samples turning to noise or
to a few modes) and one warning line says so and where the best checkpoint is. The state lives
in the checkpoint, so a resumed run tracks exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm import tqdm

from genlab.config import ModelConfig, TrainConfig
from genlab.data import ImageData
from genlab.latents import balanced_labels
from genlab.models import GenerativeModel
from genlab.quality import QualityTracker, classifier_for

COLLAPSE_FACTOR = 2.0
COLLAPSE_EPOCHS = 3


@dataclass
class WatchState:
    best_epoch: int | None = None
    best_fd: float = math.inf
    epochs_far_below: int = 0  # consecutive epochs with fd > COLLAPSE_FACTOR * best_fd
    warned: bool = False


@dataclass(frozen=True)
class Verdict:
    values: dict[str, float]  # quality_fd, quality_kd, quality_confident, quality_class_entropy, quality_seconds
    improved: bool
    warning: str | None


class QualityWatch:
    def __init__(self, tracker: QualityTracker | None, state: dict[str, Any] | None = None):
        self.tracker = tracker
        self.state = WatchState(**(state or {}))

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = WatchState(**state)

    def measure(self, decode: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]) -> dict[str, float]:
        """The quality of ``decode``'s samples, keys prefixed ``quality_``, with the seconds it took."""
        started = time.perf_counter()
        values = {f"quality_{k}": v for k, v in self.tracker.measure(decode).items()}
        return {**values, "quality_seconds": time.perf_counter() - started}

    def judge(self, epoch: int, values: dict[str, float], best_path: str) -> Verdict:
        """Update the best and collapse state with this epoch's ``values`` (from :meth:`measure`)."""
        fd, s = values["quality_fd"], self.state
        improved = math.isfinite(fd) and fd < s.best_fd
        if improved:
            s.best_epoch, s.best_fd, s.epochs_far_below = epoch, fd, 0
        elif not math.isfinite(fd) or fd > COLLAPSE_FACTOR * s.best_fd:
            s.epochs_far_below += 1
        else:
            s.epochs_far_below = 0
        warning = None
        if s.epochs_far_below >= COLLAPSE_EPOCHS and not s.warned:
            s.warned = True
            warning = (
                f"warning: sample quality has been far below its best for {s.epochs_far_below} epochs "
                f"(fd {fd:.3g} now, {s.best_fd:.3g} at epoch {s.best_epoch}): the run may be collapsing; "
                f"the best checkpoint is {best_path}"
            )
        return Verdict(values, improved, warning)


def quality_tracker(
    model: GenerativeModel, mc: ModelConfig, tc: TrainConfig, val_data: ImageData
) -> QualityTracker | None:
    """Fixed, seeded prior latents measured against the validation split (one-class runs: its class); a
    conditional model's for balanced, seeded labels. None, with a note, where the data has no class labels."""
    classifier = classifier_for(
        tc.dataset, tc.data_dir, mc.image_size, mc.channels, seed=0, condition_on=tc.condition_on
    )
    if classifier is None:
        tqdm.write(
            f"sample quality: not tracked ({tc.dataset} has no class labels for the reference classifier)",
            file=sys.stderr,
        )
        return None
    latents = model.sample_latents(tc.quality_samples, torch.Generator().manual_seed(tc.seed + 1))
    labels = None
    if mc.conditional:
        labels = torch.from_numpy(balanced_labels(tc.quality_samples, mc.num_classes, tc.seed + 1))
    return QualityTracker(classifier, val_data.images, latents.cpu(), labels)
