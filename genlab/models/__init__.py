"""The model registry: family name -> class. Names come from :mod:`genlab.families` (torch-free, the CLI's
choices); the test battery runs over what is registered here."""

from __future__ import annotations

from genlab.config import ModelConfig
from genlab.errors import GenlabError
from genlab.families import FAMILIES
from genlab.models.base import GenerativeModel
from genlab.models.gan import GAN
from genlab.models.vae import VAE
from genlab.models.vaegan import VAEGAN

MODELS: dict[str, type[GenerativeModel]] = {}


def register_model(cls: type[GenerativeModel]) -> type[GenerativeModel]:
    """Add a family; it must subclass GenerativeModel and declare its name, encoder and scores."""
    if not (isinstance(cls, type) and issubclass(cls, GenerativeModel)):
        raise TypeError(f"{cls!r} is not a GenerativeModel subclass")
    for attr in ("family", "has_encoder", "score_descriptions"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__} must define {attr}")
    if "score" not in cls.score_descriptions:
        raise TypeError(f"{cls.__name__}.score_descriptions must describe the primary 'score'")
    spec = FAMILIES.get(getattr(cls, "family", None))
    if spec is None:
        raise ValueError(f"{cls.__name__}.family {cls.family!r} is not in genlab.families.FAMILIES; add it there first")
    if cls.has_encoder != spec.has_encoder:
        raise ValueError(f"{cls.__name__}.has_encoder is {cls.has_encoder}, genlab.families says {spec.has_encoder}")
    if cls.family in MODELS:
        raise ValueError(f"model family {cls.family!r} is already registered")
    MODELS[cls.family] = cls
    return cls


for _cls in (VAE, GAN, VAEGAN):
    register_model(_cls)


def model_class(family: str) -> type[GenerativeModel]:
    if family not in MODELS:
        raise GenlabError(f"unknown model family {family!r}; choose one of {', '.join(MODELS)}")
    return MODELS[family]


def build_model(cfg: ModelConfig) -> GenerativeModel:
    cls = model_class(cfg.family)
    if cfg.conditional and cfg.num_classes < 2:
        raise GenlabError(
            f"a conditional {cfg.family} needs its number of classes (num_classes), got {cfg.num_classes}"
        )
    try:
        return cls(cfg)
    except ValueError as err:  # e.g. an image size the conv networks cannot halve
        raise GenlabError(f"cannot build {cfg.family} ({cfg.arch}): {err}") from None


__all__ = ["MODELS", "GenerativeModel", "build_model", "model_class", "register_model"]
