"""GAN (Goodfellow et al. 2014) with the non-saturating generator loss: Decoder + Discriminator.

Each step makes one discriminator update, then one generator update, each on fresh noise.
Real and generated images go through the discriminator as separate batches (DCGAN practice,
so batch norm never mixes them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genlab.config import ModelConfig
from genlab.models.base import GenerativeModel, bce_logits
from genlab.models.nets import Decoder, Discriminator, init_weights


class GAN(GenerativeModel):
    family = "gan"
    has_encoder = False
    score_descriptions = {
        "score": "-log D(x): the discriminator's negative log-probability that the image is real",
    }

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.decoder = Decoder(cfg)
        self.discriminator = Discriminator(cfg)
        init_weights(self)

    def configure_optimizers(self, lr, betas):
        return {
            "generator": torch.optim.Adam(self.decoder.parameters(), lr=lr, betas=betas),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas),
        }

    def train_step(self, x, optimizers):
        n = x.shape[0]
        with torch.no_grad():
            fake = self.decode(self.sample_latents(n))
        real_logits, _ = self.discriminator(x)
        fake_logits, _ = self.discriminator(fake)
        d_loss = bce_logits(real_logits, True) + bce_logits(fake_logits, False)
        self.apply_gradients([(optimizers["discriminator"], d_loss)])

        gen_logits, _ = self.discriminator(self.decode(self.sample_latents(n)))
        g_loss = bce_logits(gen_logits, True)
        self.apply_gradients([(optimizers["generator"], g_loss)])
        return {
            "d_loss": d_loss.detach(),
            "g_loss": g_loss.detach(),
            "d_real": torch.sigmoid(real_logits).mean().detach(),
            "d_fake": torch.sigmoid(fake_logits).mean().detach(),
        }

    @torch.no_grad()
    def anomaly_scores(self, x):
        logits, _ = self.discriminator(x)
        return {"score": F.softplus(-logits)}
