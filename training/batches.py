"""The run's data: its splits, and the training split on the device cut into each rank's batches.

Shuffling and augmentation draw from generators seeded by (seed, epoch, batch) alone, so a run
resumed at any batch sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import torch
from genlab.training.distributed import DistEnv

from genlab.config import ModelConfig, TrainConfig
from genlab.data import ImageData, load_split
from genlab.errors import GenlabError
from genlab.pixels import random_translate, uint8_to_model


def load_run_split(tc: TrainConfig, mc: ModelConfig, split: str) -> ImageData:
    """One split of the run's dataset, at the model's size and channels (a one-class run: its class only)."""
    data = load_split(tc.dataset, split, tc.data_dir, tc.download, mc.image_size, mc.channels, tc.condition_on)
    return data if tc.normal_class is None else data.only_class(tc.normal_class)


def epoch_generator(seed: int, epoch: int, batch: int = -1) -> torch.Generator:
    """Stateless per-epoch (shuffle) and per-batch (augmentation) randomness: resumable anywhere."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + batch + 1)


class Batches:
    """This rank's batches of the training split, ``per_epoch`` of them each epoch."""

    def __init__(self, data: ImageData, tc: TrainConfig, env: DistEnv):
        self.tc, self.env = tc, env
        self.images = data.images.to(env.device)
        self.labels = data.labels.to(env.device)
        self.per_epoch = len(self.images) // env.world_size // tc.batch_size
        if self.per_epoch == 0:
            raise GenlabError(
                f"{tc.dataset}: {len(self.images)} training images is less than one batch of {tc.batch_size}"
                + (f" per process ({env.world_size} processes)" if env.enabled else "")
            )

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's shuffled indices that fall to this rank."""
        perm = torch.randperm(len(self.images), generator=epoch_generator(self.tc.seed, epoch))
        return perm[self.env.rank :: self.env.world_size].to(self.env.device)

    def get(self, order: torch.Tensor, epoch: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``b`` of the epoch: model-range images (translated on uint8 where the run augments) and labels."""
        bs = self.tc.batch_size
        index = order[b * bs : (b + 1) * bs]
        images = self.images[index]
        if self.tc.translate > 0:
            generator = epoch_generator(self.tc.seed, epoch, b * self.env.world_size + self.env.rank)
            images = random_translate(images, self.tc.translate, generator)
        return uint8_to_model(images), self.labels[index]
