"""Variational autoencoder (Kingma & Welling 2013): Encoder + Decoder.

Loss per image: -log p(x | z) + beta * KL(q(z | x) || N(0, I)), both summed over their
dimensions (so beta keeps its meaning at any image size), averaged over the batch.
Conditional (Sohn et al. 2015, the conditional VAE): q(z | x, y) and p(x | z, y), the label given
to encoder and decoder, the same loss.
"""

from __future__ import annotations

import torch

from genlab.config import ModelConfig
from genlab.models.base import (
    GUARD_MEANINGS,
    KL_MEANING,
    LATENT_DISTANCE_MEANING,
    PIXEL_ERROR_MEANINGS,
    RECONSTRUCTION,
    SCORE_GUARD_MEANING,
    GenerativeModel,
    kl_to_standard_normal,
    pixel_errors,
    pixel_nll,
    reparameterize,
)
from genlab.models.nets import Decoder, Encoder, init_weights


class VAE(GenerativeModel):
    family = "vae"
    has_encoder = True
    # 2e-4 (the DCGAN recipe every family starts from) leaves one-class VAEs underfit after ONE_CLASS_STEPS, by an
    # amount that varies from seed to seed (digits 2 and 8, two seeds: final training loss 112-140 nats against 98-101
    # at 1e-3; benchmarks/one_class.py)
    one_class_lr = 1e-3
    # chosen by benchmarks/one_class.py on the validation split (normal class vs the other classes), every class, two
    # training seeds
    primary_components = ("stroke_error",)
    score_descriptions = {
        "score": "stroke_error in standard units of held-out normal images" + SCORE_GUARD_MEANING,
        "neg_elbo": "negative ELBO (pixel negative log-likelihood + KL) at the posterior mean, in nats",
        **PIXEL_ERROR_MEANINGS,
        "kl": KL_MEANING,
        "latent_distance": LATENT_DISTANCE_MEANING,
        **GUARD_MEANINGS,
    }

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        init_weights(self)
        self._init_scoring({"latent": cfg.latent_dim})

    def configure_optimizers(self, lr, betas):
        return {"vae": torch.optim.Adam(self.parameters(), lr=lr, betas=betas)}

    def encode(self, x, y=None):
        return self.encoder(x, y)

    def train_step(self, x, y, optimizers):
        y = y if self.conditional else None
        mu, logvar = self.encoder(x, y)
        nll = pixel_nll(self.decoder(reparameterize(mu, logvar), y), x, self.cfg).mean()
        kl = kl_to_standard_normal(mu, logvar).mean()
        loss = nll + self.cfg.beta * kl
        self.apply_gradients([(optimizers["vae"], loss)])
        return {"loss": loss.detach(), "nll": nll.detach(), "kl": kl.detach()}

    def score_parts(self, x, y=None):
        mu, logvar = self.encoder(x, y)
        logits = self.decoder(mu, y)
        x_rec = torch.tanh(logits)
        kl = kl_to_standard_normal(mu, logvar)
        return {
            "neg_elbo": pixel_nll(logits, x, self.cfg) + kl,
            **pixel_errors(x, x_rec),
            RECONSTRUCTION: x_rec,
            "kl": kl,
            "latent": mu,
        }
