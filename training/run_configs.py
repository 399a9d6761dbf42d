"""The configurations of a run: a new one's from the family and dataset, a resumed one's from its checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from genlab import checkpoint
from genlab.checkpoint import RunState
from genlab.config import ModelConfig, TrainConfig
from genlab.data import NORMAL_CLASS, ImageData, anomaly_layout, is_anomaly_layout, native_shape
from genlab.errors import GenlabError
from genlab.models import model_class
from genlab.run_dir import LAST_CHECKPOINT

# fields of TrainConfig that --resume may change; the rest come from the checkpoint
RESUME_OVERRIDABLE = ("epochs", "max_steps", "device", "log_every")


def new_run_configs(
    family: str, model_overrides: dict[str, Any], tc: TrainConfig, run_dir: Path
) -> tuple[ModelConfig, TrainConfig]:
    """The configs of a new run in ``run_dir``: the dataset fixes image size and channels (and, for an inspection set,
    the normal class), the family its lr."""
    family_class = model_class(family)  # unknown family: clear error before any work
    if (run_dir / LAST_CHECKPOINT).exists():
        raise GenlabError(
            f"{run_dir} already holds a run ({LAST_CHECKPOINT}); pass --resume to continue it or choose another --out"
        )
    size, channels = native_shape(tc.dataset)
    mc = ModelConfig(**{"family": family, "image_size": size, "channels": channels, **model_overrides})
    if is_anomaly_layout(tc.dataset):
        tc = inspection_train_config(mc, tc)
        if "anomaly_map" not in model_overrides:  # where a defect is, and what a blurry reconstruction hides
            mc = dataclasses.replace(mc, anomaly_map="local")
    if mc.class_weight is None:  # recorded in the checkpoint, so a later default does not change the run
        mc = dataclasses.replace(mc, class_weight=family_class.default_class_weight)
    if tc.lr is None:
        one_class_lr = family_class.one_class_lr if tc.normal_class is not None else None
        tc = dataclasses.replace(tc, lr=one_class_lr or family_class.default_lr)
    if tc.ema is None:
        tc = dataclasses.replace(tc, ema=family_class.default_ema)
    return mc, tc


def inspection_train_config(mc: ModelConfig, tc: TrainConfig) -> TrainConfig:
    """An inspection set (``mvtec:``, ``inspect:``) trains one-class on its normal images: ``tc`` with normal_class
    NORMAL_CLASS (so the one-class defaults follow); another normal class, or a conditional model, is refused."""
    normal = anomaly_layout(tc.dataset).class_names[NORMAL_CLASS]
    if mc.conditional:
        raise GenlabError(
            f"--conditional needs class labels to learn, and the training images of an inspection set are all of "
            f"class {NORMAL_CLASS} ({normal}): {tc.dataset} trains one-class; drop --conditional"
        )
    if tc.normal_class not in (None, NORMAL_CLASS):
        raise GenlabError(
            f"--normal-class {tc.normal_class}: an inspection set trains on its normal images, class {NORMAL_CLASS} "
            f"({normal}), the only class of its training split; drop --normal-class or pass {NORMAL_CLASS}"
        )
    return dataclasses.replace(tc, normal_class=NORMAL_CLASS)


def resumed_run_configs(
    family: str, run_dir: Path, changes: dict[str, Any]
) -> tuple[ModelConfig, TrainConfig, RunState]:
    """The configs and state of the run saved in ``run_dir``: what the checkpoint says, except the
    RESUME_OVERRIDABLE fields in ``changes`` (the options the user typed); anything else is refused."""
    refused = sorted(set(changes) - set(RESUME_OVERRIDABLE))
    if refused:
        raise GenlabError(
            f"--resume keeps the run's configuration; {', '.join(refused)} cannot change "
            f"(only {', '.join(RESUME_OVERRIDABLE)} can)"
        )
    path = run_dir / LAST_CHECKPOINT
    if not path.exists():
        raise GenlabError(f"--resume: no checkpoint at {path}")
    state = checkpoint.load_run_state(path)
    if state.family != family:
        raise GenlabError(f"--resume: {path} holds a {state.family} run, not {family}")
    return state.model_config, dataclasses.replace(state.train_config, **changes), state


def conditional_config(mc: ModelConfig, tc: TrainConfig, data: ImageData) -> ModelConfig:
    """A conditional model takes the training data's classes (a resumed run must find the same number)."""
    if tc.normal_class is not None:
        raise GenlabError("--conditional cannot be combined with --normal-class: a one-class run has a single label")
    if data.num_classes < 2:
        hint = " (pick a binary attribute with --condition-on ATTR, e.g. Male)" if data.dataset == "celeba" else ""
        raise GenlabError(f"--conditional needs class labels, and {data.dataset} has a single class{hint}")
    if mc.num_classes not in (0, data.num_classes):
        raise GenlabError(f"the run's model has {mc.num_classes} classes, {data.dataset} now has {data.num_classes}")
    return dataclasses.replace(mc, num_classes=data.num_classes)
