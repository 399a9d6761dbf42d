"""Feature extractors for FID-style metrics, resolved to what torch-fidelity needs.

- ``inception``: torch-fidelity's ``inception-v3-compat`` (the TF FID-Inception, pool3 2048-d)
  with weights from :mod:`genlab.eval.inception`. Its numbers are FID / KID.
- ``lenet``: the small conv classifier genlab trains on the reference dataset itself
  (:mod:`genlab.classifier`: a few epochs, cached by dataset, size, channels and seed),
  registered with torch-fidelity as ``genlab-lenet-<dataset>``. It is fast on a CPU and good
  for quick comparisons, but its numbers are Fréchet / kernel distances in *its* feature
  space: they are labelled "FD (genlab-lenet features)" and stored under ``lenet_*`` keys,
  never as FID.
"""

from __future__ import annotations

from dataclasses import dataclass

from genlab.cache import file_digest
from genlab.classifier import FEATURE_LAYERS, FEATURES, classifier_path, load_classifier
from genlab.errors import GenlabError

EXTRACTOR_CHOICES = ("inception", "lenet")


@dataclass(frozen=True)
class Extractor:
    choice: str  # "inception" | "lenet"
    name: str  # torch-fidelity registry name
    weights_path: str
    weights_source: str
    weights_identity: str
    feature_layer: str
    label: str  # how its Fréchet distance is named in text output
    key_prefix: str  # "" for Inception (fid, kid...), "lenet_" otherwise (lenet_fd, lenet_kd...)

    def metric_key(self, metric: str) -> str:
        """torch-fidelity's metric names -> ours: fid / kid for Inception, lenet_fd / lenet_kd otherwise."""
        short = {
            "frechet_inception_distance": "fid",
            "kernel_inception_distance_mean": "kid",
            "kernel_inception_distance_std": "kid_std",
        }.get(metric, metric)
        if not self.key_prefix:
            return short
        return self.key_prefix + short.replace("fid", "fd").replace("kid", "kd")


def resolve_extractor(
    choice: str,
    dataset: str,
    image_shape: tuple[int, int, int],
    data_dir: str = "data",
    inception_weights: str | None = None,
    seed: int = 0,
    condition_on: str | None = None,
) -> Extractor:
    """An extractor choice -> registered torch-fidelity extractor with its weights in place (lenet on CelebA:
    trained to tell ``condition_on`` apart, the only labels CelebA has)."""
    if choice == "inception":
        from genlab.eval.inception import resolve_inception_weights

        weights = resolve_inception_weights(inception_weights)
        return Extractor(
            "inception", "inception-v3-compat", weights.path, weights.source, weights.identity, "2048", "FID", ""
        )
    if choice == "lenet":
        if inception_weights:
            raise GenlabError("--inception-weights applies to --extractor inception only")
        channels, size, _ = image_shape
        path = classifier_path(dataset, size, channels, data_dir, seed, condition_on)
        name = register_lenet(dataset)
        return Extractor(
            "lenet",
            name,
            str(path),
            "trained by genlab",
            f"lenet-{file_digest(path)}",
            str(FEATURES),
            "FD (genlab-lenet features)",
            "lenet_",
        )
    raise GenlabError(f"unknown extractor {choice!r}; choose one of {', '.join(EXTRACTOR_CHOICES)}")


def register_lenet(dataset: str) -> str:
    """Register the lenet extractor class with torch-fidelity under genlab-lenet-<dataset>."""
    from genlab.torchvision_fix import import_torchvision

    import_torchvision()
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    from genlab.cache import slug

    name = f"genlab-lenet-{slug(dataset)}"
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(name, lenet_feature_extractor_class())
    return name


_CLASS = None


def lenet_feature_extractor_class():
    """torch-fidelity ``FeatureExtractorBase`` subclass over a cached lenet (made once per process)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import torch
    import torch.nn.functional as F

    from genlab.torchvision_fix import import_torchvision

    import_torchvision()
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.helpers import vassert

    from genlab.pixels import uint8_to_model

    class LeNetFeatures(FeatureExtractorBase):
        """uint8 [B, 3, H, W] -> 128-d penultimate features (and logits) of a genlab lenet."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise GenlabError(f"{name} needs its weights file (see genlab.classifier.classifier_path)")
            self.net, payload = load_classifier(feature_extractor_weights_path)
            self.size, self.channels = int(payload["image_size"]), int(payload["channels"])
            self.requires_grad_(False)
            self.eval()

        def forward(self, x):
            vassert(
                torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting image as torch.Tensor with dtype=torch.uint8"
            )
            vassert(x.dim() == 4 and x.shape[1] == 3, f"Input is not Bx3xHxW: {x.shape}")
            x = uint8_to_model(x)
            if self.channels == 1:  # grey images arrive replicated to 3 channels
                x = x.mean(dim=1, keepdim=True)
            if x.shape[-1] != self.size or x.shape[-2] != self.size:
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
            features = self.net[:FEATURE_LAYERS](x)
            out = {"128": features, "logits": self.net[FEATURE_LAYERS:](features)}
            return tuple(out[name].float() for name in self.features_list)

        @staticmethod
        def get_provided_features_list():
            return ("128", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"fid": "128", "kid": "128", "prc": "128", "isc": "logits"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)

    _CLASS = LeNetFeatures
    return _CLASS
