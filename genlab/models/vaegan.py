"""VAE-GAN (Larsen et al. 2016, "Autoencoding beyond pixels"), Algorithm 1.

Per batch X:  Z ~ Enc(X);  L_prior = KL(q(Z|X) || p(Z));  X~ = Dec(Z);
L_llike = -log p(Dis_l(X) | Z), a unit-variance Gaussian on the discriminator's hidden features;
Z_p ~ N(0, I), X_p = Dec(Z_p);  L_GAN = log Dis(X) + log(1 - Dis(X~)) + log(1 - Dis(X_p)).
Then, from the same forward pass, with separate optimizers:
  encoder       <- grad(beta * L_prior + L_llike)
  decoder       <- grad(gamma * L_llike - L_GAN)   (non-saturating form of -L_GAN)
  discriminator <- grad(L_GAN)                     (as binary cross-entropy)
Real, reconstructed and prior images go through the discriminator as one batch, so the
features compared by L_llike are normalised alike. As in the authors' implementation, the
discriminator and adversarial terms are balanced: the discriminator skips its update while its mean
cross-entropy on real and fake images is below ``equilibrium - margin`` (it is winning), and the
decoder drops its GAN term while it is above ``equilibrium + margin`` (it is losing). Either
side that pauses lets the other catch up, so the two cannot both stall.
``--set margin=1e9`` turns this off.

Conditional: the same algorithm with the label given to all three networks: Enc(X, y), Dec(Z, y),
Dis(X, y) (its projection term), prior images drawn for uniformly random labels y_p. As in the
auxiliary-classifier GAN (:mod:`genlab.models.gan`), the discriminator's class head learns the real
images' labels at every step (also while the balancing pauses the real/fake part), and the decoder is
also trained to make that head recognise the labels of its reconstructed and prior images.
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
    KL_MEANING,
    LATENT_DISTANCE_MEANING,
    PIXEL_ERROR_MEANINGS,
    RECONSTRUCTION,
    SCORE_GUARD_MEANING,
    GenerativeModel,
    bce_logits,
    class_loss,
    kl_to_standard_normal,
    pixel_errors,
    reparameterize,
)
from genlab.models.nets import Decoder, Discriminator, Encoder, init_weights


def feature_error(f_x: torch.Tensor, f_rec: torch.Tensor) -> torch.Tensor:
    """-log N(Dis_l(X~); Dis_l(X), I) up to a constant, per image [B]."""
    return 0.5 * (f_x - f_rec).pow(2).sum(dim=1)


class VAEGAN(GenerativeModel):
    family = "vaegan"
    has_encoder = True
    default_lr = 3e-4
    # chosen by benchmarks/one_class.py on the validation split (normal class vs the other classes), every class
    primary_components = (RECON_ERROR, "relative_recon_error")
    score_descriptions = {
        "score": "recon_error and relative_recon_error, each in standard units of held-out normal images, averaged"
        + SCORE_GUARD_MEANING,
        "feature_error": "0.5 * squared distance between discriminator features of the image and its reconstruction",
        **PIXEL_ERROR_MEANINGS,
        "kl": KL_MEANING,
        "discriminator": DISCRIMINATOR_MEANING,
        "latent_distance": LATENT_DISTANCE_MEANING,
        "features_distance": FEATURES_DISTANCE_MEANING,
        **GUARD_MEANINGS,
    }

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.discriminator = Discriminator(cfg)
        init_weights(self)
        self._init_scoring({"latent": cfg.latent_dim, "features": self.discriminator.feature_dim})

    def configure_optimizers(self, lr, betas):
        return {
            "encoder": torch.optim.Adam(self.encoder.parameters(), lr=lr, betas=betas),
            "decoder": torch.optim.Adam(self.decoder.parameters(), lr=lr, betas=betas),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas),
        }

    def encode(self, x, y=None):
        return self.encoder(x, y)

    def train_step(self, x, y, optimizers):
        n = x.shape[0]
        y = y if self.conditional else None
        y_prior = self.random_labels(n)
        mu, logvar = self.encoder(x, y)
        x_rec = self.decode(reparameterize(mu, logvar), y)
        x_prior = self.decode(self.sample_latents(n), y_prior)
        labels = None if y is None else torch.cat([y, y, y_prior])
        logits, features = self.discriminator(torch.cat([x, x_rec, x_prior]), labels)
        real_logits, rec_logits, prior_logits = logits.split(n)
        f_x, f_rec, f_prior = features.split(n)

        prior_loss = kl_to_standard_normal(mu, logvar).mean()
        llike = feature_error(f_x, f_rec).mean()
        d_real = bce_logits(real_logits, True)
        d_class = class_loss(self, f_x, y)
        d_loss = d_real + bce_logits(rec_logits, False) + bce_logits(prior_logits, False)
        g_loss = bce_logits(rec_logits, True) + bce_logits(prior_logits, True)
        g_class = class_loss(self, torch.cat([f_rec, f_prior]), labels[n:] if labels is not None else None)

        # Larsen et al.'s equilibrium balancing: pause the discriminator while it wins by a
        # margin, and the decoder's GAN term while it loses by one.
        d_fake = 0.5 * (d_loss - d_real)  # mean cross-entropy over reconstructed and prior images
        d_mean = 0.5 * (d_real + d_fake).item()
        train_dis = d_mean >= self.cfg.equilibrium - self.cfg.margin
        use_gan = d_mean <= self.cfg.equilibrium + self.cfg.margin
        updates = [
            (optimizers["encoder"], self.cfg.beta * prior_loss + llike),
            (optimizers["decoder"], self.cfg.gamma * llike + (g_loss if use_gan else 0.0) + g_class),
        ]
        if train_dis or self.conditional:  # the class head keeps learning while the real/fake judgement pauses
            updates.append((optimizers["discriminator"], (d_loss if train_dis else 0.0) + d_class))
        self.apply_gradients(updates)
        losses = {
            "prior": prior_loss.detach(),
            "llike": llike.detach(),
            "g_loss": g_loss.detach(),
            "d_loss": d_loss.detach(),
            "d_trained": torch.tensor(float(train_dis)),
            "gan_used": torch.tensor(float(use_gan)),
        }
        if self.conditional:
            losses["d_class"] = d_class.detach()
        return losses

    def score_parts(self, x, y=None):
        mu, logvar = self.encoder(x, y)
        x_rec = self.decode(mu, y)
        logits, f_x = self.discriminator(x, y)
        _, f_rec = self.discriminator(x_rec, y)
        return {
            "feature_error": feature_error(f_x, f_rec),
            **pixel_errors(x, x_rec),
            RECONSTRUCTION: x_rec,
            "kl": kl_to_standard_normal(mu, logvar),
            "discriminator": F.softplus(-logits),
            "latent": mu,
            "features": f_x,
        }
