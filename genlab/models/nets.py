"""The shared networks: Encoder, Decoder (= Generator) and Discriminator.

``conv`` follows the DCGAN-style networks of the VAE-GAN paper (Larsen et al. 2016): stride-2 4x4
convolutions with batch norm, halving the image until it is at most 7 pixels (28 -> 14 -> 7,
32 -> 16 -> 8 -> 4, 64 -> ... -> 4), channels doubling from ``width``; the decoder mirrors the
encoder with transposed convolutions. ``mlp`` is a fully connected baseline (two hidden layers), as
in the GAN/VAE comparisons of the background papers. All three families are built from these classes.

The decoder returns pre-activation values ("logits"); a family applies ``tanh`` to get pixels
in [-1, 1], the range every dataset is scaled to.

A conditional model (``cfg.classes`` > 0) gives every network the image's class label:

- Decoder: the label's one-hot vector is appended to z (Sohn et al. 2015's conditional VAE, the
  generator of Mirza and Osindero's conditional GAN and of AC-GAN);
- Encoder: the one-hot vector is appended to the image features before the head that gives
  (mu, logvar), so q(z | x, y) need not spend code on the class;
- Discriminator: a projection term <embed(y), features> is added to the real/fake logit (Miyato
  and Koyama 2018), so an image judged real must also look like its label; and a class head
  predicts the label from the same features (Odena et al. 2017's auxiliary classifier).

One-hot vectors are rows of a fixed identity matrix (a gather in ONNX). An unconditional model
has none of these layers, so its weights and checkpoints are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from genlab.config import ModelConfig


def conv_plan(image_size: int) -> tuple[int, int]:
    """(number of stride-2 stages, side of the smallest feature map) for a square image."""
    side, stages = image_size, 0
    while side > 7 and side % 2 == 0:
        side //= 2
        stages += 1
    if stages == 0:
        raise ValueError(f"conv networks need an even image size above 7, got {image_size}")
    return stages, side


def _widths(cfg: ModelConfig, stages: int) -> list[int]:
    return [cfg.width * 2**i for i in range(stages)]


def _image_to_features(cfg: ModelConfig, activation: nn.Module, norm_first: bool) -> tuple[nn.Sequential, int]:
    """The trunk Encoder and Discriminator share: image -> flat features, and their number.

    conv: a stride-2 4x4 convolution per stage, each followed by batch norm (without a bias, which
    batch norm makes redundant) except the first one when ``norm_first`` is False (DCGAN: no
    batch norm on the discriminator's input layer), then ``activation``. mlp: two hidden layers.
    """
    layers: list[nn.Module]
    if cfg.arch == "conv":
        stages, side = conv_plan(cfg.image_size)
        layers, in_ch = [], cfg.channels
        for i, ch in enumerate(_widths(cfg, stages)):
            norm = norm_first or i > 0
            layers.append(nn.Conv2d(in_ch, ch, 4, 2, 1, bias=not norm))
            if norm:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(activation)
            in_ch = ch
        layers.append(nn.Flatten())
        return nn.Sequential(*layers), in_ch * side * side
    layers = [
        nn.Flatten(),
        nn.Linear(cfg.channels * cfg.image_size**2, cfg.hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(cfg.hidden, cfg.hidden),
        nn.LeakyReLU(0.2),
    ]
    return nn.Sequential(*layers), cfg.hidden


class OneHot(nn.Module):
    """Appends the one-hot vector of a label [B] to a tensor [B, D]; with 0 classes, returns the tensor unchanged."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes
        self.register_buffer("eye", torch.eye(classes), persistent=False)

    def forward(self, v: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if not self.classes:
            return v
        if y is None:
            raise ValueError("a conditional network needs the class labels")
        return torch.cat([v, self.eye[y]], dim=1)


class Encoder(nn.Module):
    """Image in [-1, 1] (and its label, if conditional) -> (mu, logvar) of the diagonal Gaussian posterior
    q(z | x[, y])."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.body, features = _image_to_features(cfg, nn.ReLU(), norm_first=True)
        self.label = OneHot(cfg.classes)
        self.head = nn.Linear(features + cfg.classes, 2 * cfg.latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.label(self.body(x), y)).chunk(2, dim=1)
        return mu, logvar


class Decoder(nn.Module):
    """Latent z (and a label, conditional) -> pre-activation image; ``tanh`` of it is the image in [-1, 1]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        shape = (cfg.channels, cfg.image_size, cfg.image_size)
        self.label = OneHot(cfg.classes)
        inputs = cfg.latent_dim + cfg.classes
        if cfg.arch == "conv":
            stages, side = conv_plan(cfg.image_size)
            widths = _widths(cfg, stages)[::-1]
            layers: list[nn.Module] = [
                nn.Linear(inputs, widths[0] * side * side, bias=False),
                nn.BatchNorm1d(widths[0] * side * side),
                nn.ReLU(),
                nn.Unflatten(1, (widths[0], side, side)),
            ]
            for in_ch, out_ch in zip(widths, widths[1:]):
                layers += [nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
            layers += [nn.ConvTranspose2d(widths[-1], cfg.channels, 4, 2, 1)]
        else:
            layers = [
                nn.Linear(inputs, cfg.hidden),
                nn.ReLU(),
                nn.Linear(cfg.hidden, cfg.hidden),
                nn.ReLU(),
                nn.Linear(cfg.hidden, shape[0] * shape[1] * shape[2]),
                nn.Unflatten(1, shape),
            ]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(self.label(z, y))


class Discriminator(nn.Module):
    """Image in [-1, 1] (and its label, conditional) -> (real/fake logit [B], features of its last hidden layer [B, F]).

    The features are the "Dis_l" layer on which the VAE-GAN measures reconstruction error. A
    conditional discriminator adds the projection <embed(y), features> to the logit, and
    :meth:`classify` gives its auxiliary class logits [B, classes] from the features.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.body, features = _image_to_features(cfg, nn.LeakyReLU(0.2), norm_first=False)
        self.feature_dim = features
        if cfg.arch == "conv":  # Larsen et al.: a fully connected layer between Dis_l and the output
            self.head = nn.Sequential(nn.Linear(features, cfg.hidden), nn.LeakyReLU(0.2), nn.Linear(cfg.hidden, 1))
        else:
            self.head = nn.Linear(features, 1)
        if cfg.classes:
            self.embed = nn.Embedding(cfg.classes, features)
            self.classes = nn.Linear(features, cfg.classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        logits = self.head(features).squeeze(1)
        if hasattr(self, "embed"):
            if y is None:
                raise ValueError("a conditional discriminator needs the class labels")
            logits = logits + (self.embed(y) * features).sum(dim=1)
        return logits, features

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Auxiliary class logits [B, classes] from :meth:`forward`'s features (conditional only)."""
        return self.classes(features)


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
