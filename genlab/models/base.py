"""What every model family provides, and the math the families share.

A family is an ``nn.Module`` built from :mod:`genlab.models.nets` that supplies its optimizers
and its own ``train_step``; the training loop never branches on the family. Scores returned by
``anomaly_scores`` are per image, larger = more anomalous, and deterministic in eval mode
(the posterior mean is used, batch norm uses running statistics), so they do not depend on
the batch an image arrives in.

A conditional model (``cfg.conditional``) takes the class label ``y`` (int64 [B]) wherever an
image or a latent goes in. Scoring an image without its label (``y`` None, or -1 for some images)
scores it under every class and keeps the class with the lowest primary score: the class that
explains the image best; ``anomaly_scores`` says which (``label``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from genlab.config import ModelConfig
from genlab.measures import RECON_ERROR, RECON_ERROR_MEANING
from genlab.models.local_map import LOCAL_DEVIATION, LOCAL_DEVIATION_MEANING, LocalMap
from genlab.models.scoring import LOW_CONTRAST, LOW_CONTRAST_MEANING, LOW_CONTRAST_WEIGHT, ScoreFit
from genlab.pixels import model_to_uint8

RECONSTRUCTION = "reconstruction"  # the part of score_parts that is the reconstruction the scores compare with


class GenerativeModel(nn.Module):
    family: ClassVar[str]
    has_encoder: ClassVar[bool]
    default_lr: ClassVar[float] = 2e-4
    # Adam's learning rate for a one-class run (--normal-class: ONE_CLASS_STEPS steps on one class); None: default_lr
    one_class_lr: ClassVar[float | None] = None
    default_ema: ClassVar[float] = 0.0  # decay of the decoder-weight average (0: off)
    # weight of a conditional GAN's / VAE-GAN's auxiliary class loss, where ModelConfig.class_weight is None
    default_class_weight: ClassVar[float] = 3.0
    # name -> meaning of each anomaly-score component; "score" is the primary one
    score_descriptions: ClassVar[dict[str, str]]
    # the components the primary score combines (each in standard units of held-out normal images)
    primary_components: ClassVar[tuple[str, ...]]

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.classes  # 0: unconditional
        self.class_weight = self.default_class_weight if cfg.class_weight is None else cfg.class_weight

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def _init_scoring(self, spaces: dict[str, int]) -> None:
        """Call once the networks exist: ``spaces`` maps each vector ``score_parts`` returns to its width. With
        ``cfg.anomaly_map`` "local" the primary score is the local map's (:mod:`genlab.models.local_map`)."""
        local = LocalMap(self.cfg.image_size) if self.cfg.anomaly_map == "local" else None
        primary = (LOCAL_DEVIATION,) if local is not None else self.primary_components
        self.score_fit = ScoreFit(spaces, primary, local)

    def descriptions(self) -> dict[str, str]:
        """name -> meaning of each score component this model gives (``score_descriptions``, and with a local
        anomaly map its ``local_deviation``, which is then the primary score)."""
        if self.score_fit.local is None:
            return dict(self.score_descriptions)
        return {
            **self.score_descriptions,
            "score": f"{LOCAL_DEVIATION} in standard units of held-out normal images" + SCORE_GUARD_MEANING,
            LOCAL_DEVIATION: LOCAL_DEVIATION_MEANING,
        }

    # -- training -------------------------------------------------------------------------
    def configure_optimizers(self, lr: float, betas: tuple[float, float]) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]
    ) -> dict[str, torch.Tensor]:
        """One update on a batch in [-1, 1] with its labels (used by conditional models); returns detached scalar
        losses by name."""
        raise NotImplementedError

    @staticmethod
    def apply_gradients(updates: list[tuple[torch.optim.Optimizer, torch.Tensor]]) -> None:
        """Give each optimizer the gradient of its own loss, then step them all.

        Several losses share one forward graph (Algorithm 1 of the VAE-GAN); each optimizer's
        parameters receive the gradient of that optimizer's loss only. All gradients are
        taken before any parameter changes, so no step invalidates the graph.
        """
        params = [[p for group in optimizer.param_groups for p in group["params"]] for optimizer, _ in updates]
        grads = [
            torch.autograd.grad(loss, ps, retain_graph=i < len(updates) - 1, allow_unused=True)
            for i, ((_, loss), ps) in enumerate(zip(updates, params))
        ]
        for (optimizer, _), ps, group_grads in zip(updates, params, grads):
            for p, g in zip(ps, group_grads):
                p.grad = torch.zeros_like(p) if g is None else g
            optimizer.step()

    # -- inference ------------------------------------------------------------------------
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (and labels, conditional) -> images in [-1, 1]."""
        return torch.tanh(self.decoder(z, y))

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{self.family} has no encoder")

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        mu, _ = self.encode(x, y)
        return self.decode(mu, y)

    def score_parts(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Images in [-1, 1] (and labels, conditional) -> scalar components [B], for each space of ``score_fit``
        vectors [B, D], and ``reconstruction``: the reconstruction [B, C, H, W] in [-1, 1] they compare with."""
        raise NotImplementedError

    def _scores(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        components = {}
        parts = self.score_parts(x, y)
        x_rec = parts.pop(RECONSTRUCTION)
        for name, value in parts.items():
            if value.dim() == 1:
                components[name] = value
            else:
                components[f"{name}_distance"] = self.score_fit.distance(name, value)
        if self.score_fit.local is not None:
            components[LOCAL_DEVIATION] = self.score_fit.local.score(x, x_rec)
        components[LOW_CONTRAST] = self.score_fit.low_contrast(x)
        return {"score": self.score_fit.combine(components), **components}

    @torch.no_grad()
    def anomaly_scores(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Images in [-1, 1] -> {component: [B]}; ``score`` is the primary score.

        A vector part becomes ``<space>_distance`` (:meth:`ScoreFit.distance`); ``low_contrast`` measures how far
        the image's contrast falls below the normal images' (:meth:`ScoreFit.low_contrast`); the primary score
        combines ``primary_components`` and adds the contrast guard (:meth:`ScoreFit.combine`). Both use the statistics
        :func:`genlab.calibration.fit_to_training_data` fitted on normal images. A conditional model
        adds ``label`` (int64 [B]): ``y`` where given, else the class found by :meth:`labelled_scores`.
        """
        if not self.conditional:
            return self._scores(x, None)
        if y is None or bool((y < 0).any()):
            return self.labelled_scores(x, y)
        return {**self._scores(x, y), "label": y}

    @torch.no_grad()
    def labelled_scores(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """A conditional model's scores with the label searched where it is missing (None or -1): every image is
        scored under each class and keeps the class with the lowest primary score. No branch on the values, so
        it traces into one ONNX graph."""
        b, k = x.shape[0], self.num_classes
        every = self._scores(torch.cat([x] * k), torch.arange(k * b, device=x.device) // b)  # class-major [K * B]
        best = every["score"].reshape(k, b).argmin(dim=0)
        label = best if y is None else torch.where(y >= 0, y, best)
        pick = label * b + torch.arange(b, device=x.device)
        return {**{name: value[pick] for name, value in every.items()}, "label": label}

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = next(self.parameters()).device
        return torch.randn(n, self.cfg.latent_dim, generator=generator, device="cpu").to(device)

    def random_labels(self, n: int) -> torch.Tensor | None:
        """Uniform class labels [n] for the generated half of a training step (None for an unconditional model)."""
        if not self.conditional:
            return None
        return torch.randint(0, self.num_classes, (n,), device=next(self.parameters()).device)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


KL_MEANING = "KL divergence of q(z|x) from the N(0, I) prior, in nats"  # the `kl` score component
LATENT_DISTANCE_MEANING = (
    "squared Mahalanobis distance of the posterior mean from the normal training images' "
    "posterior means, per latent dimension"
)
FEATURES_DISTANCE_MEANING = (
    "squared distance of the discriminator's features from their mean on the normal training "
    "images, in per-feature standard deviations, averaged over features"
)
DISCRIMINATOR_MEANING = "-log D(x): the discriminator's negative log-probability that the image is real"
# the end of every primary score's description, and the guard's own component
SCORE_GUARD_MEANING = (
    f"; an image with {LOW_CONTRAST} > 0 scores max(0, that) + {LOW_CONTRAST_WEIGHT:g} * {LOW_CONTRAST} instead"
)
GUARD_MEANINGS = {LOW_CONTRAST: LOW_CONTRAST_MEANING}


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dimensions: [B]."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def pixel_nll(logits: torch.Tensor, x: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """-log p(x | z) summed over pixels, per image [B]; ``x`` in [-1, 1].

    bernoulli: the decoder's image is tanh(a) = 2 sigmoid(2a) - 1, so the Bernoulli mean
    sigmoid(2a) has logits 2a and the target is x rescaled to [0, 1].
    gaussian: fixed standard deviation ``gaussian_sigma`` around tanh(a), normaliser included.
    """
    if cfg.likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(2.0 * logits, (x + 1.0) / 2.0, reduction="none")
    else:
        sigma = cfg.gaussian_sigma
        nll = 0.5 * ((x - torch.tanh(logits)) / sigma).pow(2) + math.log(sigma * math.sqrt(2 * math.pi))
    return nll.flatten(1).sum(dim=1)


def recon_error(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """:data:`genlab.measures.RECON_ERROR_MEANING`, per image, float64 [B]; ``x`` and ``x_rec`` in [-1, 1].

    Both images are first rounded to the uint8 pixels a user sees (``model_to_uint8``), so this
    is the number :func:`genlab.measures.recon_error` gives for the exported reconstruction.
    """
    diff = (model_to_uint8(x).double() - model_to_uint8(x_rec).double()) / 255.0
    return diff.pow(2).flatten(1).mean(dim=1)


RELATIVE_RECON_ERROR_MEANING = (
    "recon_error divided by the image's mean squared pixel value in [0, 1] units (at least 1e-3): the error per unit "
    "of ink. Pixel errors grow with the amount of ink, which makes simple images look normal (Serra et al. 2020, "
    "input complexity); dividing by the image's energy removes that bias"
)
MIN_ENERGY = 1e-3


def relative_recon_error(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """:data:`RELATIVE_RECON_ERROR_MEANING`, per image [B]; ``x`` and ``x_rec`` in [-1, 1]."""
    energy = (model_to_uint8(x).double() / 255.0).pow(2).flatten(1).mean(dim=1).clamp_min(MIN_ENERGY)
    return recon_error(x, x_rec) / energy


STROKE_ERROR_MEANING = (
    "mean squared difference between the uint8 image and its uint8 reconstruction (pixels scaled to [0, 1]) over only "
    "the pixels where either of them is brighter than 0.2: the error per pixel of stroke. Averaged over the whole "
    "image, errors are diluted by the background, more so for thin digits; over the union of both strokes, a "
    "reconstruction that draws the normal class instead of what the image shows counts its missing and its added "
    "strokes alike"
)
STROKE_LEVEL = 0.2  # in [0, 1] pixel units; 0.1-0.3 measured alike (benchmarks/one_class.py, validation split)


def stroke_error(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """:data:`STROKE_ERROR_MEANING`, per image, float64 [B]; ``x`` and ``x_rec`` in [-1, 1]. 0 for a blank image
    reconstructed blank; where every pixel is bright (most photographs) it is ``recon_error``."""
    a, b = model_to_uint8(x).double() / 255.0, model_to_uint8(x_rec).double() / 255.0
    stroke = ((a > STROKE_LEVEL) | (b > STROKE_LEVEL)).double()
    return ((a - b).pow(2) * stroke).flatten(1).sum(dim=1) / stroke.flatten(1).sum(dim=1).clamp_min(1.0)


PIXEL_ERROR_MEANINGS = {
    RECON_ERROR: RECON_ERROR_MEANING,
    "relative_recon_error": RELATIVE_RECON_ERROR_MEANING,
    "stroke_error": STROKE_ERROR_MEANING,
}


def pixel_errors(x: torch.Tensor, x_rec: torch.Tensor) -> dict[str, torch.Tensor]:
    """The score components that compare an image with its reconstruction pixel by pixel (:data:`PIXEL_ERROR_MEANINGS`),
    the same in every family; ``x`` and ``x_rec`` in [-1, 1]."""
    return {
        RECON_ERROR: recon_error(x, x_rec),
        "relative_recon_error": relative_recon_error(x, x_rec),
        "stroke_error": stroke_error(x, x_rec),
    }


def class_loss(model: GenerativeModel, features: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """AC-GAN's auxiliary loss: cross-entropy of the discriminator's class head on ``features`` against ``y``,
    times ``class_weight``; 0 for an unconditional model."""
    if y is None or not model.conditional:
        return features.new_zeros(())
    return model.class_weight * F.cross_entropy(model.discriminator.classify(features), y)


def bce_logits(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Mean binary cross-entropy of discriminator logits against all-real or all-fake labels."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)
