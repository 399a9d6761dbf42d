"""GAN (Goodfellow et al. 2014) with the non-saturating generator loss, and f-AnoGAN's encoder
(Schlegl et al. 2019): Decoder (generator) + Discriminator + Encoder.

Each step makes one discriminator update, then one generator update, each on fresh noise. Real and
generated images go through the discriminator as separate batches (DCGAN practice, so batch norm
never mixes them). Then one encoder update on f-AnoGAN's izi_f loss: the image x is encoded, decoded
by the generator and compared with x in pixels and in the discriminator's features,
``mean((x - G(E(x)))^2) + kappa * mean((f(x) - f(G(E(x))))^2)``, with the generator and discriminator
frozen (eval mode, no gradient to them). f-AnoGAN trains the encoder after the GAN; here it follows
the generator as it trains, so the loop stays one loop and the encoder matches the final generator.
The encoder gives the GAN ``/reconstruct``, anomaly maps and the izi_f anomaly score.

Conditional: the auxiliary-classifier GAN (Odena et al. 2017). The generator takes the label; the
discriminator's class head learns the real images' labels (``class_weight`` times its cross-entropy
joins the discriminator's loss), and the generator is also trained to make that head recognise the
label it was asked for. The discriminator also sees the label through its projection term (Miyato
and Koyama 2018), so it judges "a real-looking image of this class", not just "a real-looking image".
The class head learns from real images only: asked to classify the generator's early scrawls as
well, it would learn to accept them as their labels (AC-GAN's known pull toward easy-to-classify
samples comes from that term). The encoder is given the label too: E(x, y), G(E(x, y), y).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genlab.config import ModelConfig
from genlab.measures import RECON_ERROR
from genlab.models.base import (
    DISCRIMINATOR_MEANING,
    FEATURES_DISTANCE_MEANING,
    GUARD_MEANINGS,
    LATENT_DISTANCE_MEANING,
    PIXEL_ERROR_MEANINGS,
    RECONSTRUCTION,
    SCORE_GUARD_MEANING,
    GenerativeModel,
    bce_logits,
    class_loss,
    pixel_errors,
)
from genlab.models.nets import Decoder, Discriminator, Encoder, init_weights

KAPPA = 1.0  # f-AnoGAN's weight of the feature residual


def izi_f(x: torch.Tensor, x_rec: torch.Tensor, f_x: torch.Tensor, f_rec: torch.Tensor) -> torch.Tensor:
    """f-AnoGAN's izi_f residual per image [B]: pixel MSE + KAPPA * discriminator-feature MSE."""
    pixels = (x - x_rec).pow(2).flatten(1).mean(dim=1)
    return pixels + KAPPA * (f_x - f_rec).pow(2).mean(dim=1)


class GAN(GenerativeModel):
    family = "gan"
    has_encoder = True
    # the class loss pulls the generator toward easy-to-classify samples (AC-GAN's known loss of variety), so the
    # GAN keeps it at 1 and the VAE-GAN uses 3: benchmarks/README.md, "Conditional generation", has the figures
    default_class_weight = 1.0
    # chosen by benchmarks/one_class.py on the validation split (normal class vs the other classes), every class
    primary_components = (RECON_ERROR, "relative_recon_error")
    score_descriptions = {
        "score": "recon_error and relative_recon_error (of G(E(image))), each in standard units of held-out normal "
        "images, averaged" + SCORE_GUARD_MEANING,
        "discriminator": DISCRIMINATOR_MEANING,
        "izi_f": "f-AnoGAN's anomaly score: pixel MSE + discriminator-feature MSE between the image and G(E(image)), "
        "pixels in [-1, 1]",
        **PIXEL_ERROR_MEANINGS,
        "latent_distance": LATENT_DISTANCE_MEANING.replace("posterior mean", "encoder's code"),
        "features_distance": FEATURES_DISTANCE_MEANING,
        **GUARD_MEANINGS,
    }

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.decoder = Decoder(cfg)
        self.discriminator = Discriminator(cfg)
        self.encoder = Encoder(cfg)
        init_weights(self)
        self._init_scoring({"latent": cfg.latent_dim, "features": self.discriminator.feature_dim})

    def configure_optimizers(self, lr, betas):
        return {
            "generator": torch.optim.Adam(self.decoder.parameters(), lr=lr, betas=betas),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas),
            "encoder": torch.optim.Adam(self.encoder.parameters(), lr=lr, betas=betas),
        }

    def encode(self, x, y=None):
        """The encoder is deterministic: its code, and a log-variance of 0 that carries no meaning."""
        z, _ = self.encoder(x, y)
        return z, torch.zeros_like(z)

    def train_step(self, x, y, optimizers):
        n = x.shape[0]
        y = y if self.conditional else None
        y_fake = self.random_labels(n)
        with torch.no_grad():
            fake = self.decode(self.sample_latents(n), y_fake)
        real_logits, real_features = self.discriminator(x, y)
        fake_logits, _ = self.discriminator(fake, y_fake)
        d_class = class_loss(self, real_features, y)
        d_loss = bce_logits(real_logits, True) + bce_logits(fake_logits, False) + d_class
        self.apply_gradients([(optimizers["discriminator"], d_loss)])

        y_gen = self.random_labels(n)
        gen_logits, gen_features = self.discriminator(self.decode(self.sample_latents(n), y_gen), y_gen)
        g_loss = bce_logits(gen_logits, True) + class_loss(self, gen_features, y_gen)
        self.apply_gradients([(optimizers["generator"], g_loss)])

        self.decoder.eval()  # frozen as f-AnoGAN has them: batch norm on running statistics, as when scoring
        self.discriminator.eval()
        try:
            x_rec = self.decode(self.encoder(x, y)[0], y)
            _, f_x = self.discriminator(x, y)
            _, f_rec = self.discriminator(x_rec, y)
            e_loss = izi_f(x, x_rec, f_x.detach(), f_rec).mean()
            self.apply_gradients([(optimizers["encoder"], e_loss)])
        finally:
            self.decoder.train()
            self.discriminator.train()
        losses = {
            "d_loss": d_loss.detach(),
            "g_loss": g_loss.detach(),
            "e_loss": e_loss.detach(),
            "d_real": torch.sigmoid(real_logits).mean().detach(),
            "d_fake": torch.sigmoid(fake_logits).mean().detach(),
        }
        if self.conditional:
            losses["d_class"] = d_class.detach()
        return losses

    def score_parts(self, x, y=None):
        z, _ = self.encoder(x, y)
        x_rec = self.decode(z, y)
        logits, f_x = self.discriminator(x, y)
        _, f_rec = self.discriminator(x_rec, y)
        return {
            "discriminator": F.softplus(-logits),
            "izi_f": izi_f(x, x_rec, f_x, f_rec),
            **pixel_errors(x, x_rec),
            RECONSTRUCTION: x_rec,
            "latent": z,
            "features": f_x,
        }
