"""The checkpoint format: the one module that knows its layout.

A checkpoint is a plain dict of Python scalars, strings, lists, dicts and tensors, written with
``torch.save`` (temp file + rename) and read with ``torch.load(weights_only=True)``. Training fills a
:class:`RunState` and saves :meth:`RunState.to_checkpoint`; a resume reads one back with
:meth:`RunState.from_checkpoint`::

    format          "genlab-checkpoint"
    format_version  1
    genlab_version  version that wrote it
    family          "vae" | "gan" | "vaegan"
    model_config    ModelConfig as a dict (rebuilds the networks with no other input)
    train_config    TrainConfig as a dict (lr resolved)
    data            dataset, dataset_hash, split, image_size, channels, value_range, normal_class, translate,
                    num_train, pixel_format, class_names (label k is class_names[k]) and condition_on
                    (CelebA's attribute) of the training data; model_config says whether the model is
                    conditional and its num_classes. ``dataset`` is the name the run read (``folder:PATH``
                    with its path, as train_config has it: this file is the user's own, and ``--resume`` and
                    ``genlab eval`` read the data from there); ``dataset_hash`` is an image folder's
                    :func:`genlab.data.dataset_hash` (None for a registered dataset). An export publishes
                    the dataset by :func:`genlab.data.published_name`, never its path
    seed, epoch, step, complete (True once training finished and calibration ran)
    model           state dict of the unwrapped model (the training weights)
    ema             AveragedModel state dict of the decoder (``module.*``, ``n_averaged``) or None; the
                    weights samples, calibration and exports use
    optimizers      {name: optimizer state dict}
    rng             {"ranks": [{"torch": ByteTensor, "cuda": ByteTensor (on a GPU)}, ...]}, one per rank
    position        {"epoch", "batch", "sums", "count"}: where an interrupted epoch resumes, and the loss
                    sums of its steps so far
    metrics         {"epochs": [per-epoch means], "train_seconds": float}
    quality         the sample-quality watch's state (best epoch and FD, collapse count)
    score_fit       {buffer: tensor}: the anomaly-score statistics fitted on normal images after training
                    (genlab.models.scoring) or None before training ends
    prior           the latent prior fitted to the training codes (genlab.latents; per class for a conditional
                    model), None for N(0, I)
    prior_quality   sample quality (genlab.quality) of that prior's samples, or None
    calibration     {"split", "n", "check": the default threshold's false-positive rate on unseen normal images
                     (genlab.thresholds.calibration_check), "percentiles": [0..100 grid], "scores": {name: [quantiles]},
                     "descriptions": {name: meaning}} or None before training ends
    selection       best.pt only: the sentence that says which epoch it holds and why (genlab.training.best_checkpoint)
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import Any

import torch

from genlab import __version__
from genlab.config import ModelConfig, TrainConfig, from_dict, to_dict
from genlab.errors import GenlabError
from genlab.files import atomic_write
from genlab.latents import describe as describe_prior
from genlab.models import GenerativeModel, build_model
from genlab.pixels import VALUE_RANGE
from genlab.run_dir import checkpoint_file
from genlab.thresholds import calibration_summary

FORMAT = "genlab-checkpoint"
FORMAT_VERSION = 1
ZIP_MAGIC = b"PK\x03\x04"  # how every file torch.save writes begins
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
    with open(path, "rb") as f:
        magic = f.read(len(ZIP_MAGIC))
    if magic != ZIP_MAGIC:  # torch.save writes a zip archive; anything else is some other kind of file
        raise GenlabError(
            f"{path} is not a readable genlab checkpoint (corrupt or truncated?): not a file torch.save wrote, so "
            "neither a genlab checkpoint nor an export (an export is a directory with manifest.json)"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False, which would run the file's code
        raise GenlabError(
            f"{path} is not a genlab checkpoint: it holds Python objects beyond tensors and plain data, "
            "so it was refused unread"
        ) from None
    except (zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as err:
        text = str(err).strip()
        first = text.splitlines()[0].split(". ")[0].rstrip(".") if text else err.__class__.__name__  # one sentence
        raise GenlabError(f"{path} is not a readable genlab checkpoint (corrupt or truncated?): {first}") from None
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


def class_info(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a client needs to ask a conditional model for a class: whether it is conditional and the class names
    (label k is names[k]); an unconditional model lists the classes of its training data for people."""
    mc, data = ckpt["model_config"], ckpt["data"]
    conditional = bool(mc.get("conditional")) and int(mc.get("num_classes", 0)) > 0
    names = list(data.get("class_names") or [])
    if conditional and len(names) != int(mc["num_classes"]):
        names = [str(k) for k in range(int(mc["num_classes"]))]
    return {"conditional": conditional, "names": names, "condition_on": data.get("condition_on")}


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random state, as the checkpoint keeps it for each rank."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Continue the random streams of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class Fitted:
    """What the end of training fits on normal images (:func:`genlab.calibration.fit_to_training_data`), and
    the sample quality of the fitted prior's samples (None until measured, or without a prior or tracker)."""

    score_fit: dict[str, torch.Tensor]
    prior: dict[str, Any] | None
    calibration: dict[str, Any]
    prior_quality: dict[str, Any] | None = None

    @classmethod
    def from_fit(cls, fit: dict[str, Any]) -> Fitted:
        """From :func:`genlab.calibration.fit_to_training_data`'s result."""
        return cls(fit["score_fit"], fit["prior"], fit["calibration"])

    @property
    def calibrated_scores(self) -> set[str]:
        return set(self.calibration["scores"])

    def record_prior_quality(self, measured: dict[str, float]) -> None:
        """Keep ``measured`` (:meth:`genlab.quality.QualityTracker.measure` of the prior's samples)."""
        self.prior_quality = {"prior": describe_prior(self.prior), **measured}

    @property
    def prior_fd(self) -> float | None:
        return (self.prior_quality or {}).get("fd")


@dataclass
class Progress:
    """Where a run is: epochs, batches of the open epoch and steps done; the open epoch's loss sums over its
    ``epoch_count`` steps; the closed epochs' records; the seconds spent in training steps."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    epoch_sums: dict[str, float] = field(default_factory=dict)
    epoch_count: int = 0
    epoch_history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0


@dataclass
class RunState:
    """Everything a training checkpoint holds, as the trainer fills it to save and reads it to resume.

    ``model``, ``optimizers`` and ``ema`` are state dicts, ``rng`` one :func:`rng_state` per rank, ``quality``
    the sample-quality watch's state; ``class_names``, ``num_train``, ``num_val`` and ``dataset_hash`` (an image
    folder's :func:`genlab.data.dataset_hash`) describe the training data.
    """

    model_config: ModelConfig
    train_config: TrainConfig
    class_names: list[str]
    num_train: int | None
    num_val: int | None
    progress: Progress
    model: dict[str, torch.Tensor]
    optimizers: dict[str, dict[str, Any]]
    ema: dict[str, torch.Tensor] | None
    rng: list[dict[str, torch.Tensor]]
    world_size: int = 1
    quality: dict[str, Any] = field(default_factory=dict)
    fitted: Fitted | None = None
    complete: bool = False
    dataset_hash: str | None = None

    @property
    def family(self) -> str:
        return self.model_config.family

    @property
    def epoch(self) -> int:
        return self.progress.epoch

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint payload (:func:`save_checkpoint` adds the format header)."""
        mc, tc, at, fitted = self.model_config, self.train_config, self.progress, self.fitted
        return {
            "family": mc.family,
            "model_config": to_dict(mc),
            "train_config": to_dict(tc),
            "data": self._data(),
            "seed": tc.seed,
            "epoch": at.epoch,
            "step": at.step,
            "complete": self.complete,
            "world_size": self.world_size,
            "model": _cpu(self.model),
            "optimizers": self.optimizers,
            "ema": None if self.ema is None else _cpu(self.ema),
            "rng": {"ranks": [_cpu(r) for r in self.rng]},
            "position": {"epoch": at.epoch, "batch": at.batch, "sums": dict(at.epoch_sums), "count": at.epoch_count},
            "metrics": {"epochs": list(at.epoch_history), "train_seconds": at.train_seconds},
            "quality": self.quality,
            "score_fit": None if fitted is None else fitted.score_fit,
            "prior": None if fitted is None else fitted.prior,
            "calibration": None if fitted is None else fitted.calibration,
            "prior_quality": None if fitted is None else fitted.prior_quality,
        }

    def _data(self) -> dict[str, Any]:
        mc, tc = self.model_config, self.train_config
        return {
            "dataset": tc.dataset,
            "dataset_hash": self.dataset_hash,
            "split": "train",
            "image_size": mc.image_size,
            "channels": mc.channels,
            "value_range": list(VALUE_RANGE),
            "pixel_format": "uint8",
            "normal_class": tc.normal_class,
            "class_names": list(self.class_names),
            "condition_on": tc.condition_on,
            "translate": tc.translate,
            "num_train": self.num_train,
            "num_val": self.num_val,
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> RunState:
        """The run state of a training checkpoint (one :func:`load_checkpoint` returned)."""
        position, metrics, data = ckpt["position"], ckpt["metrics"], ckpt["data"]
        progress = Progress(
            epoch=position["epoch"],
            batch=position["batch"],
            step=ckpt["step"],
            epoch_sums=dict(position["sums"]),
            epoch_count=position["count"],
            epoch_history=list(metrics["epochs"]),
            train_seconds=metrics["train_seconds"],
        )
        fitted = None
        if ckpt.get("score_fit") is not None and ckpt.get("calibration") is not None:  # older ones lack score_fit
            fitted = Fitted(ckpt["score_fit"], ckpt.get("prior"), ckpt["calibration"], ckpt.get("prior_quality"))
        return cls(
            model_config=model_config(ckpt),
            train_config=train_config(ckpt),
            class_names=list(data.get("class_names") or []),
            num_train=data.get("num_train"),
            num_val=data.get("num_val"),
            progress=progress,
            model=ckpt["model"],
            optimizers=ckpt["optimizers"],
            ema=ckpt.get("ema"),
            rng=list(ckpt["rng"]["ranks"]),
            world_size=ckpt.get("world_size", 1),
            quality=ckpt.get("quality", {}),
            fitted=fitted,
            complete=bool(ckpt.get("complete", False)),
            dataset_hash=data.get("dataset_hash"),
        )


def load_run_state(path: str | os.PathLike) -> RunState:
    return RunState.from_checkpoint(load_checkpoint(path))


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in tensors.items()}


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
    """Rebuild the model from the checkpoint alone, weights loaded (the decoder's EMA where the run kept one), for
    inference: in eval mode, its parameters without gradients, so what it returns is plain data (``.numpy()``,
    ``float()``) with no autograd graph behind it. Training continues a run through :class:`RunState` instead."""
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
    return model.to(device).eval().requires_grad_(False)


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
        "sample_quality": _watch_summary(ckpt.get("quality")),
        **({"selection": ckpt["selection"]} if ckpt.get("selection") else {}),
        "latent_prior": describe_prior(ckpt.get("prior")),
        "prior_sample_quality": ckpt.get("prior_quality"),
        "calibration": calibration_summary(calibration) if calibration else None,
    }


def _watch_summary(quality: dict[str, Any] | None) -> dict[str, Any] | None:
    """The per-epoch quality watch's state, named for what it measured (N(0, I) samples, not the fitted prior's)."""
    if not quality:
        return None
    return {
        "measured_on": "N(0, I) samples, each epoch",
        "lowest_fd_epoch": quality.get("best_epoch"),
        "lowest_fd": quality.get("best_fd"),
        "epochs_far_above_lowest": quality.get("epochs_far_below"),
    }
