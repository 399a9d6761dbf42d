"""Variational autoencoder (Kingma & Welling 2013): Encoder + Decoder.

Loss per image: -log p(x | z) + beta * KL(q(z | x) || N(0, I)), both summed over their
dimensions (so beta keeps its meaning at any image size), averaged over the batch.
"""

from __future__ import annotations

import torch

from genlab.config import ModelConfig
from genlab.measures import RECON_ERROR, RECON_ERROR_MEANING
from genlab.models.base import KL_MEANING, GenerativeModel, kl_to_standard_normal, pixel_nll, recon_error, reparameterize
from genlab.models.nets import Decoder, Encoder, init_weights


class VAE(GenerativeModel):
    family = "vae"
    has_encoder = True
    score_descriptions = {
        "score": "negative ELBO (pixel negative log-likelihood + KL) at the posterior mean, in nats",
        RECON_ERROR: RECON_ERROR_MEANING,
        "kl": KL_MEANING,
    }

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        init_weights(self)

    def configure_optimizers(self, lr, betas):
        return {"vae": torch.optim.Adam(self.parameters(), lr=lr, betas=betas)}

    def encode(self, x):
        return self.encoder(x)

    def train_step(self, x, optimizers):
        mu, logvar = self.encoder(x)
        nll = pixel_nll(self.decoder(reparameterize(mu, logvar)), x, self.cfg).mean()
        kl = kl_to_standard_normal(mu, logvar).mean()
        loss = nll + self.cfg.beta * kl
        self.apply_gradients([(optimizers["vae"], loss)])
        return {"loss": loss.detach(), "nll": nll.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def anomaly_scores(self, x):
        mu, logvar = self.encoder(x)
        logits = self.decoder(mu)
        kl = kl_to_standard_normal(mu, logvar)
        return {
            "score": pixel_nll(logits, x, self.cfg) + kl,
            RECON_ERROR: recon_error(x, torch.tanh(logits)),
            "kl": kl,
        }
