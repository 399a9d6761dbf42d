"""The checkpoint format: the one module that knows its layout.

A checkpoint is a plain dict of Python scalars, strings, lists, dicts and tensors, written with
``torch.save`` (temp file + rename) and read with ``torch.load(weights_only=True)``::

    format          "genlab-checkpoint"
    format_version  1
    genlab_version  version that wrote it
    family          "vae" | "gan" | "vaegan"
    model_config    ModelConfig as a dict (rebuilds the networks with no other input)
    train_config    TrainConfig as a dict (lr resolved)
    data            dataset, split, image_size, channels, value_range, normal_class, translate,
                    num_train, pixel_format, class_names (label k is class_names[k]) and condition_on
                    (CelebA's attribute) of the training data; model_config says whether the model is
                    conditional and its num_classes
    seed, epoch, step, complete (True once training finished and calibration ran)
    model           state dict of the unwrapped model (the training weights)
    ema             AveragedModel state dict of the decoder (``module.*``, ``n_averaged``) or None; the
                    weights samples, calibration and exports use
    optimizers      {name: optimizer state dict}
    rng             {"torch": ByteTensor, "cuda": [ByteTensor, ...] per rank or device}
    position        {"epoch": e, "batch": i}: where an interrupted epoch resumes
    metrics         {"epochs": [per-epoch means], "train_seconds": float}
    score_fit       {buffer: tensor}: the anomaly-score statistics fitted on normal images after training
                    (genlab.models.scoring) or None before training ends
    prior           the latent prior fitted to the training codes (genlab.latents; per class for a conditional
                    model), None for N(0, I)
    prior_quality   sample quality (genlab.quality) of that prior's samples, or None
    calibration     {"split", "n", "percentiles": [0..100 grid], "scores": {name: [quantiles]},
                     "descriptions": {name: meaning}} or None before training ends
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import torch

from genlab import __version__
from genlab.config import ModelConfig, TrainConfig, from_dict
from genlab.errors import GenlabError
from genlab.files import atomic_write
from genlab.latents import describe as describe_prior
from genlab.models import GenerativeModel, build_model
from genlab.run_dir import checkpoint_file
from genlab.thresholds import quantile

FORMAT = "genlab-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "family", "model_config", "train_config", "data", "model")


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Write atomically (:func:`genlab.files.atomic_write`): a crash, even SIGKILL, leaves the previous
    checkpoint intact, never half a file."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "genlab_version": __version__, **payload}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; any problem is a GenlabError naming the file."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise GenlabError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise GenlabError(
            f"{path} is not a readable genlab checkpoint (corrupt or truncated?): {first[:200]}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise GenlabError(f"{path} is not a genlab checkpoint")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise GenlabError(
            f"{path} has checkpoint format version {ckpt.get('format_version')!r}; "
            f"this genlab ({__version__}) reads version {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise GenlabError(f"{path} is missing {', '.join(missing)}")
    return ckpt


def model_config(ckpt: dict[str, Any]) -> ModelConfig:
    return from_dict(ModelConfig, ckpt["model_config"])


def train_config(ckpt: dict[str, Any]) -> TrainConfig:
    return from_dict(TrainConfig, ckpt["train_config"])


def load_weights(model: GenerativeModel, weights: dict[str, torch.Tensor], family: str) -> None:
    """``model.load_state_dict(weights)``, with a readable GenlabError when they do not fit."""
    missing = sorted(set(model.state_dict()) - set(weights))
    if missing and all(k.startswith("encoder.") for k in missing) and family == "gan":
        raise GenlabError(
            "this GAN checkpoint was trained by an older genlab, before GANs had f-AnoGAN's encoder; "
            "train it again (genlab train gan ...)"
        )
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise GenlabError(f"checkpoint weights do not fit a {family} model: {str(err).splitlines()[0]}") from None


def model_from_checkpoint(
    ckpt: dict[str, Any] | str | os.PathLike, device: str | torch.device = "cpu"
) -> GenerativeModel:
    """Rebuild the model from the checkpoint alone, weights loaded (the decoder's EMA where the run kept one), in eval mode."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = build_model(model_config(ckpt))
    load_weights(model, ckpt["model"], ckpt["family"])
    try:
        if ckpt.get("ema"):  # the decoder's averaged weights are the ones to sample and export with
            model.decoder.load_state_dict(
                {k[len("module.") :]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
            )
    except RuntimeError as err:
        raise GenlabError(
            f"checkpoint weights do not fit a {ckpt['family']} model: {str(err).splitlines()[0]}"
        ) from None
    try:
        if ckpt.get("score_fit"):
            model.score_fit.load(ckpt["score_fit"])
    except ValueError as err:
        raise GenlabError(
            f"the checkpoint's anomaly scores were fitted by another genlab version ({err}); fit them again "
            f"with: genlab train {ckpt['family']} --out RUN_DIR --resume"
        ) from None
    return model.to(device).eval()


def describe(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A JSON-friendly summary for ``genlab info``: everything but tensors."""
    params = sum(t.numel() for t in ckpt["model"].values() if torch.is_floating_point(t))
    epochs = ckpt.get("metrics", {}).get("epochs", [])
    calibration = ckpt.get("calibration")
    return {
        "format_version": ckpt["format_version"],
        "genlab_version": ckpt.get("genlab_version"),
        "family": ckpt["family"],
        "model_config": ckpt["model_config"],
        "parameters": params,
        "conditional": bool(ckpt["model_config"].get("conditional")),
        "data": ckpt["data"],
        "train_config": ckpt["train_config"],
        "seed": ckpt.get("seed"),
        "epoch": ckpt.get("epoch"),
        "step": ckpt.get("step"),
        "complete": ckpt.get("complete", False),
        "world_size": ckpt.get("world_size", 1),
        "train_seconds": ckpt.get("metrics", {}).get("train_seconds"),
        "last_epoch_metrics": epochs[-1] if epochs else None,
        "sample_quality": ckpt.get("quality"),
        "latent_prior": describe_prior(ckpt.get("prior")),
        "prior_sample_quality": ckpt.get("prior_quality"),
        "calibration": None
        if not calibration
        else {
            "split": calibration["split"],
            "n": calibration["n"],
            "scores": {
                name: {
                    **{f"p{p}": quantile(calibration, name, p) for p in (50, 95, 99)},
                    "meaning": calibration["descriptions"].get(name, ""),
                }
                for name in calibration["scores"]
            },
        },
    }
