"""Sample quality measured cheaply during training, in the reference classifier's features.

At the end of each epoch the training loop decodes a fixed, seeded set of N(0, I) latents (the prior training
uses; exports draw from the latent prior fitted after training, which the end of training measures the same way) and
compares the images with the validation split in the features of :mod:`genlab.classifier`:

- ``fd``: the Fréchet distance between the two feature distributions (FID's formula; lower is better);
- ``kd``: the kernel distance, the unbiased squared MMD with KID's cubic polynomial kernel;
- ``confident``: the share of samples the classifier assigns to some class with probability >= 0.9
  (alone it can be fooled: the classifier is just as sure of pure noise, all in one class; read it
  with the two below);
- ``class_entropy``: the entropy of the predicted class histogram over log(classes): 1.0 when every
  class is drawn equally often, lower when samples collapse onto a few classes;
- ``class_fidelity`` (conditional models, whose samples are drawn for given labels): the share of
  samples the classifier assigns to the class they were asked for.

The distances come from torch-fidelity's own functions; the reference features are computed
once per run. The numbers are distances in a small classifier's feature space, for watching a
run: they are not FID.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from genlab.errors import GenlabError

CONFIDENT = 0.9
METRICS = ("fd", "kd", "confident", "class_entropy")  # and class_fidelity where samples have labels


def _distances():
    """torch-fidelity's Fréchet and kernel distances (it imports torchvision: go through the fix)."""
    from genlab.torchvision_fix import import_torchvision

    import_torchvision()
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kernel_mmd

    def fd(a: torch.Tensor, b: torch.Tensor) -> float:
        stats = fid_features_to_statistics(a.double()), fid_features_to_statistics(b.double())
        return float(fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID])

    def kd(a: torch.Tensor, b: torch.Tensor) -> float:
        m = min(len(a), len(b))  # the unbiased estimate compares sets of one size: a fixed, seeded subset of each
        g = torch.Generator().manual_seed(0)
        a, b = (x[torch.randperm(len(x), generator=g)[:m]] if len(x) > m else x for x in (a, b))
        return float(kernel_mmd(a.double().numpy(), b.double().numpy()))

    return fd, kd


Decode = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]  # (latents, labels or None) -> uint8 images


class QualityTracker:
    """Measures ``decode``'s samples of ``latents`` (for ``labels``, a conditional model's) against ``reference``
    uint8 images (the validation split)."""

    def __init__(
        self,
        classifier_file: str,
        reference: torch.Tensor,
        latents: torch.Tensor,
        labels: torch.Tensor | None = None,
        batch_size: int = 500,
    ):
        from genlab.classifier import FEATURE_LAYERS, load_classifier

        if len(reference) < 2 or len(latents) < 2:
            raise GenlabError("sample quality needs at least 2 reference images and 2 samples")
        self.net, self.info = load_classifier(classifier_file)
        self.features, self.head = self.net[:FEATURE_LAYERS], self.net[FEATURE_LAYERS:]
        self.latents = latents
        self.labels = labels
        self.batch_size = batch_size
        self.fd, self.kd = _distances()
        self.reference, _ = self._embed(reference)

    @torch.no_grad()
    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from genlab.pixels import uint8_to_model

        features, logits = [], []
        for start in range(0, len(images), self.batch_size):
            f = self.features(uint8_to_model(images[start : start + self.batch_size].cpu()))
            features.append(f)
            logits.append(self.head(f))
        return torch.cat(features), torch.cat(logits)

    @torch.no_grad()
    def measure(self, decode: Decode, latents: torch.Tensor | None = None) -> dict[str, float]:
        """``decode``: (latents, labels) -> uint8 images; ``latents``: instead of the fixed ones (with the same labels).
        Returns every metric in METRICS, and class_fidelity for labelled samples."""
        latents = self.latents if latents is None else latents
        labels = self.labels

        def chunk(i: int) -> torch.Tensor:
            return decode(
                latents[i : i + self.batch_size], None if labels is None else labels[i : i + self.batch_size]
            ).cpu()

        images = torch.cat([chunk(i) for i in range(0, len(latents), self.batch_size)])
        features, logits = self._embed(images)
        probs = logits.softmax(dim=1)
        classes = probs.shape[1]
        histogram = torch.bincount(probs.argmax(dim=1), minlength=classes).double() / len(probs)
        entropy = -(histogram[histogram > 0] * histogram[histogram > 0].log()).sum().item() / math.log(classes)
        measured = {
            "fd": self.fd(features, self.reference),
            "kd": self.kd(features, self.reference),
            "confident": float((probs.max(dim=1).values >= CONFIDENT).double().mean()),
            "class_entropy": float(entropy),
        }
        if labels is not None:
            measured["class_fidelity"] = float((probs.argmax(dim=1) == labels.cpu()).double().mean())
        return measured


def classifier_for(
    dataset: str, data_dir: str, image_size: int, channels: int, seed: int, condition_on: str | None = None
) -> str | None:
    """The reference classifier's file for this data, trained on first use; None if the data has no labels."""
    from genlab.classifier import NoLabels, classifier_path

    try:
        return str(classifier_path(dataset, image_size, channels, data_dir, seed, condition_on))
    except NoLabels:
        return None


N01_SAMPLES = "N(0, I) samples"  # what the per-epoch figures measure: the decoder on standard-normal latents
PRIOR_SAMPLES = "fitted-prior samples"  # what the end of training measures: the latents exports and /generate draw


def summary(values: dict[str, Any], label: str = "quality") -> str:
    """The quality part of a line, e.g. 'N(0, I) samples: fd 12.3, kd 0.021, confident 0.87, classes 0.98' (``label``:
    what was measured, :data:`N01_SAMPLES` or :data:`PRIOR_SAMPLES`)."""
    if not values:
        return ""
    text = (
        f"{label}: fd {values['fd']:.3g}, kd {values['kd']:.3g}, confident {values['confident']:.2f}, "
        f"classes {values['class_entropy']:.2f}"
    )
    return text + (f", class fidelity {values['class_fidelity']:.3f}" if "class_fidelity" in values else "")


__all__ = ["CONFIDENT", "METRICS", "N01_SAMPLES", "PRIOR_SAMPLES", "QualityTracker", "classifier_for", "summary"]
