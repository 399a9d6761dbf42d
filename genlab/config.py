"""Frozen configs for the model architecture and for a training run.

The model reads only :class:`ModelConfig`; the loop reads only :class:`TrainConfig`. Both are
stored in the checkpoint as plain dicts and rebuilt from it. ``--set key=value`` on the command
line overrides any field of either, by name.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from genlab.devices import check_device
from genlab.errors import GenlabError

ANOMALY_MAPS = ("error", "local")


@dataclass(frozen=True)
class ModelConfig:
    family: str
    arch: str = "conv"  # conv: DCGAN-style convolutions; mlp: the fully connected baselines
    image_size: int = 28
    channels: int = 1
    latent_dim: int = 32
    width: int = 32  # conv: channels of the first conv layer, doubled per downsampling
    hidden: int = 512  # mlp: units per hidden layer
    likelihood: str = "bernoulli"  # vae pixel likelihood: bernoulli | gaussian
    gaussian_sigma: float = 0.1  # std of the gaussian likelihood, in the [-1, 1] pixel range
    beta: float = 1.0  # weight of the KL term (vae, vaegan)
    gamma: float = 1e-2  # vaegan: weight of the feature reconstruction loss in the decoder update
    equilibrium: float = 0.68  # vaegan: target discriminator cross-entropy (about ln 2)
    margin: float = 0.35  # vaegan: how far from equilibrium before D or the GAN term pauses
    # class-conditional model: the label goes into encoder, decoder and discriminator (genlab.models.nets)
    conditional: bool = False
    num_classes: int = 0  # set from the training data's classes for a conditional model
    # gan, vaegan (conditional): weight of the auxiliary classification loss (AC-GAN); None: the family's default
    # (GenerativeModel.default_class_weight: 1 for the GAN, 3 for the VAE-GAN, each measured on mnist-5k)
    class_weight: float | None = None
    # the anomaly map and the score built on it: "error", |image - reconstruction|; "local", the local deviation
    # from normal images (genlab.models.local_map), the default of inspection datasets (mvtec:, inspect:)
    anomaly_map: str = "error"

    def __post_init__(self) -> None:
        if self.arch not in ("conv", "mlp"):
            raise GenlabError(f"arch must be 'conv' or 'mlp', got {self.arch!r}")
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise GenlabError(f"likelihood must be 'bernoulli' or 'gaussian', got {self.likelihood!r}")
        if self.anomaly_map not in ANOMALY_MAPS:
            raise GenlabError(f"anomaly_map must be 'error' or 'local', got {self.anomaly_map!r}")
        if self.channels not in (1, 3):
            raise GenlabError(f"channels must be 1 or 3, got {self.channels}")
        for name in ("image_size", "latent_dim", "width", "hidden"):
            if getattr(self, name) < 1:
                raise GenlabError(f"{name} must be positive, got {getattr(self, name)}")
        if self.gaussian_sigma <= 0 or self.beta < 0 or self.gamma < 0 or (self.class_weight or 0.0) < 0:
            raise GenlabError("gaussian_sigma must be > 0; beta, gamma and class_weight must be >= 0")
        if self.num_classes < 0 or (
            self.conditional and self.num_classes == 1
        ):  # 0: taken from the data when training starts
            raise GenlabError(f"a conditional model needs at least 2 classes, got {self.num_classes}")

    @property
    def classes(self) -> int:
        """The number of labels the networks take: 0 for an unconditional model."""
        return self.num_classes if self.conditional else 0


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "mnist-5k"
    data_dir: str = "data"
    download: bool = False
    normal_class: int | None = None
    condition_on: str | None = None  # celeba: the binary attribute that labels the images (e.g. Male)
    translate: float = 0.0  # random shifts of up to this fraction of the image size
    # None: DEFAULT_EPOCHS, or for one-class runs (few images per epoch) enough epochs for ONE_CLASS_STEPS steps
    epochs: int | None = None
    max_steps: int | None = None  # stop (with a checkpoint) after this many optimizer steps
    batch_size: int = 64
    lr: float | None = None  # None: the family's default (Adam, 2e-4 GAN/VAE, 3e-4 VAE-GAN)
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0
    device: str = "auto"
    log_every: int = 10  # steps between progress-bar / metrics flushes
    sample_count: int = 64  # images in each epoch's sample grid
    # exponential moving average of the decoder's weights, used for samples, quality, calibration and export
    # (0: off; None: the family's default)
    ema: float | None = None
    quality_every: int = 1  # measure sample quality every N epochs (0: off); see genlab.quality
    quality_samples: int = 500  # prior samples it measures

    def __post_init__(self) -> None:
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 2:
            raise GenlabError("epochs must be >= 1 and batch_size >= 2")
        if not 0.0 <= self.translate < 0.5:
            raise GenlabError(f"translate must be in [0, 0.5), got {self.translate}")
        if self.lr is not None and self.lr <= 0:
            raise GenlabError(f"lr must be positive, got {self.lr}")
        check_device(self.device)
        if self.max_steps is not None and self.max_steps < 1:
            raise GenlabError("max_steps must be >= 1")
        if self.ema is not None and not 0.0 <= self.ema < 1.0:
            raise GenlabError(f"ema must be in [0, 1), got {self.ema}")
        if self.quality_every < 0 or self.quality_samples < 2:
            raise GenlabError("quality_every must be >= 0 and quality_samples >= 2")
        if self.log_every < 1:
            raise GenlabError(f"log_every must be >= 1, got {self.log_every}")


DEFAULT_EPOCHS = 5
ONE_CLASS_STEPS = 1000  # the default budget of a one-class run, in optimizer steps (benchmarks/one_class.py)


def resolve_epochs(tc: TrainConfig, batches_per_epoch: int) -> TrainConfig:
    """``tc`` with its epoch count settled: the one given, or the default for the kind of run."""
    if tc.epochs is not None:
        return tc
    if tc.normal_class is None:
        return dataclasses.replace(tc, epochs=DEFAULT_EPOCHS)
    return dataclasses.replace(tc, epochs=max(1, -(-ONE_CLASS_STEPS // batches_per_epoch)))


def _convert(text: str, annotation: Any, key: str) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):  # X | None
        if text.lower() in ("none", "null", ""):
            return None
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    try:
        if annotation is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return annotation(text)
    except ValueError:
        raise GenlabError(f"--set {key}={text}: expected a {annotation.__name__}") from None


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """Split ``key=value`` strings; raise a readable error on a malformed one."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise GenlabError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def split_overrides(
    overrides: dict[str, str], protected: tuple[str, ...] = ("family",)
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route ``--set`` values to ModelConfig or TrainConfig fields, converted to the field's type."""
    model_hints = get_type_hints(ModelConfig)
    train_hints = get_type_hints(TrainConfig)
    model_kw: dict[str, Any] = {}
    train_kw: dict[str, Any] = {}
    for key, text in overrides.items():
        if key in protected:
            raise GenlabError(f"--set {key}: not settable here")
        if key in model_hints:
            model_kw[key] = _convert(text, model_hints[key], key)
        elif key in train_hints:
            train_kw[key] = _convert(text, train_hints[key], key)
        else:
            known = sorted((set(model_hints) | set(train_hints)) - set(protected))
            raise GenlabError(f"--set {key}: unknown key; known keys: {', '.join(known)}")
    return model_kw, train_kw


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config, ignoring keys a newer genlab may have added."""
    known = set(field_names(cls))
    return cls(**{k: v for k, v in data.items() if k in known})


__all__ = [
    "ModelConfig",
    "TrainConfig",
    "field_names",
    "from_dict",
    "parse_overrides",
    "split_overrides",
    "to_dict",
]
