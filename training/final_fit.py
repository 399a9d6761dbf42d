"""The fits at the end of training: the anomaly scores' statistics, the latent prior and the calibration on
normal images (:func:`genlab.calibration.fit_to_training_data`), and the sample quality of the fitted prior's
samples, which are what exports generate."""

from __future__ import annotations

import sys

import torch
from genlab.training.sample_grids import decode_uint8
from tqdm import tqdm

from genlab.calibration import fit_to_training_data
from genlab.checkpoint import Fitted
from genlab.config import ModelConfig, TrainConfig
from genlab.data import ImageData
from genlab.latents import sample_latents
from genlab.models import GenerativeModel
from genlab.quality import PRIOR_SAMPLES, QualityTracker
from genlab.quality import summary as quality_summary


class FinalFit:
    """Called with a model (the last weights or best.pt's) and what it is (e.g. "last.pt, epoch 20"), for the console
    line that reports its fitted-prior samples: what exports and /generate draw."""

    def __init__(
        self,
        mc: ModelConfig,
        tc: TrainConfig,
        data: tuple[ImageData, ImageData],
        tracker: QualityTracker | None,
        device: torch.device,
    ):
        self.latent_dim, self.seed, self.samples = mc.latent_dim, tc.seed, tc.quality_samples
        self.train_data, self.val_data = data
        self.tracker, self.device = tracker, device

    def __call__(self, model: GenerativeModel, which: str) -> Fitted:
        fitted = Fitted.from_fit(fit_to_training_data(model, self.train_data, self.val_data, self.device, self.seed))
        if fitted.prior is not None and self.tracker is not None:
            labels = self.tracker.labels
            latents = sample_latents(
                self.samples,
                self.latent_dim,
                self.seed + 1,
                prior=fitted.prior,
                labels=None if labels is None else labels.numpy(),
            )
            measured = self.tracker.measure(
                lambda z, y: decode_uint8(model, z, y, self.device), torch.from_numpy(latents)
            )
            fitted.record_prior_quality(measured)
            tqdm.write(
                f"{which}: {quality_summary(measured, PRIOR_SAMPLES)} (what exports and /generate draw)",
                file=sys.stderr,
            )
        return fitted
