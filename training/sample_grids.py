"""The run's image grids: samples from fixed latents and reconstructions of fixed validation images.

Each epoch writes ``RUN_DIR/samples/epoch_NNN.png`` and ``samples/recon_epoch_NNN.png`` (held-out
images on odd rows, their reconstructions on even rows), and the latest of each as ``samples.png``
and ``reconstructions.png``; at the end ``samples.png`` is drawn from the fitted prior, as exports draw.
A conditional model's sample grid has one row per class (the first GRID_MAX_CLASSES).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genlab.config import ModelConfig, TrainConfig
from genlab.data import ImageData
from genlab.imageio import save_grid
from genlab.latents import class_rows, sample_latents
from genlab.models import GenerativeModel
from genlab.pixels import model_to_uint8, uint8_to_model

RECON_IMAGES = 32
RECON_COLUMNS = 8  # images per row of the reconstruction grid
GRID_PER_CLASS, GRID_MAX_CLASSES = 8, 16


@torch.no_grad()
def decode_uint8(model: GenerativeModel, z: torch.Tensor, y: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """``model``'s uint8 images of latents ``z`` (and labels ``y``), decoded in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    images = model_to_uint8(model.decode(z.to(device), None if y is None else y.to(device))).cpu()
    model.train(was_training)
    return images


def recon_layout(available: int) -> tuple[int, int]:
    """The reconstruction grid's (columns, images) for ``available`` validation images: up to RECON_IMAGES in full
    rows of RECON_COLUMNS, or one row of all of them where there are fewer, so no cell is left blank."""
    if available < RECON_COLUMNS:
        return available, available
    count = min(RECON_IMAGES, available)
    return RECON_COLUMNS, count - count % RECON_COLUMNS


def paired_rows(originals: torch.Tensor, recon: torch.Tensor, columns: int = RECON_COLUMNS) -> torch.Tensor:
    """uint8 images and their reconstructions [N, C, H, W] -> the grid's cells: rows of ``columns`` originals, each
    followed by the row of their reconstructions, the last pair of rows filled with blank cells, so originals stay on
    odd rows and reconstructions on even rows for any N."""
    blank = (-len(originals)) % columns
    if blank:
        pad = torch.zeros((blank, *originals.shape[1:]), dtype=originals.dtype)
        originals, recon = torch.cat([originals, pad]), torch.cat([recon, pad])
    return torch.cat(
        [t for i in range(0, len(originals), columns) for t in (originals[i : i + columns], recon[i : i + columns])]
    )


class SampleGrids:
    """The fixed latents (and a conditional model's labels) and validation images the run's grids show."""

    def __init__(self, model: GenerativeModel, mc: ModelConfig, tc: TrainConfig, val_data: ImageData, run_dir: Path):
        self.model, self.run_dir = model, run_dir
        self.device = next(model.parameters()).device
        self.latent_dim, self.seed, self.conditional = mc.latent_dim, tc.seed, mc.conditional
        self.labels = None
        if mc.conditional:
            self.labels = torch.from_numpy(class_rows(min(mc.num_classes, GRID_MAX_CLASSES), GRID_PER_CLASS))
        self.row = None if self.labels is None else GRID_PER_CLASS
        count = tc.sample_count if self.labels is None else len(self.labels)
        self.latents = model.sample_latents(count, torch.Generator().manual_seed(tc.seed))
        self.recon_columns, count = recon_layout(len(val_data))
        pick = torch.randperm(len(val_data), generator=torch.Generator().manual_seed(tc.seed))[:count]
        self.recon_images = val_data.images[pick.sort().values]  # a fixed, class-mixed set
        self.recon_labels = val_data.labels[pick.sort().values]

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return decode_uint8(self.model, z, self.labels, self.device)

    @torch.no_grad()
    def write_epoch(self, epoch: int) -> None:
        """The epoch's grids, from the decoder as it is (the loop puts the averaged weights in place)."""
        self.model.eval()
        samples = self._decode(self.latents).numpy()
        save_grid(samples, self.run_dir / "samples" / f"epoch_{epoch:03d}.png", self.row)
        save_grid(samples, self.run_dir / "samples.png", self.row)
        if self.model.has_encoder and len(self.recon_images):
            originals = self.recon_images
            y = self.recon_labels.to(self.device) if self.conditional else None
            recon = model_to_uint8(self.model.reconstruct(uint8_to_model(originals.to(self.device)), y)).cpu()
            grid = paired_rows(originals, recon, self.recon_columns).numpy()
            save_grid(grid, self.run_dir / "samples" / f"recon_epoch_{epoch:03d}.png", nrow=self.recon_columns)
            save_grid(grid, self.run_dir / "reconstructions.png", nrow=self.recon_columns)
        self.model.train()

    def write_prior_samples(self, prior: dict[str, Any]) -> None:
        """samples.png as exports draw it: the fixed count (and classes) from the fitted latent prior."""
        labels = None if self.labels is None else self.labels.numpy()
        z = sample_latents(len(self.latents), self.latent_dim, self.seed, prior=prior, labels=labels)
        save_grid(self._decode(torch.from_numpy(z)).numpy(), self.run_dir / "samples.png", self.row)
