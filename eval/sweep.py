"""``genlab sweep``: a learning-rate sweep over model families, then the report.

Each (family, lr) trains into ``OUT/<family>-lr<lr>/``. Running the sweep again keeps finished
runs, resumes interrupted ones (or extends them to more epochs), and only trains what is
missing; then the cheap evaluations run and ``OUT/report/`` is written.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genlab.errors import GenlabError
from genlab.families import FAMILY_NAMES
from genlab.run_dir import is_run_dir


@dataclass(frozen=True)
class SweepSettings:
    families: tuple[str, ...] = FAMILY_NAMES
    lrs: tuple[float, ...] = (1.5e-4, 3e-4, 6e-4)
    dataset: str = "mnist-5k"
    data_dir: str = "data"
    epochs: int = 5
    max_steps: int | None = None
    batch_size: int | None = None
    seed: int = 0
    normal_class: int | None = None
    overrides: tuple[str, ...] = ()  # key=value, as genlab train --set
    device: str = "auto"
    translate_experiment: bool = False
    n: int = 500

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in FAMILY_NAMES]
        if not self.families or unknown:
            raise GenlabError(
                f"--families: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(FAMILY_NAMES)}"
            )
        if not self.lrs or any(lr <= 0 for lr in self.lrs):
            raise GenlabError(f"--lrs must be positive numbers, got {list(self.lrs)}")


def run_name(family: str, lr: float) -> str:
    """The run directory of one (family, lr): e.g. vae-lr0.0003."""
    return f"{family}-lr{lr:g}"


def train_config_for(settings: SweepSettings, lr: float):
    """The TrainConfig of one run; --set training keys apply, the sweep's own flags win."""
    from genlab.config import TrainConfig, parse_overrides, split_overrides

    _, train_kw = split_overrides(parse_overrides(list(settings.overrides)))
    flags = {
        "dataset": settings.dataset,
        "data_dir": settings.data_dir,
        "epochs": settings.epochs,
        "max_steps": settings.max_steps,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "normal_class": settings.normal_class,
        "device": settings.device,
        "lr": lr,
    }
    train_kw.update({k: v for k, v in flags.items() if v is not None})
    return TrainConfig(**train_kw)


def train_or_resume(family: str, lr: float, settings: SweepSettings, run_dir: Path) -> dict[str, Any]:
    """Train one run, or resume it from its checkpoint with the sweep's epochs, max steps and device
    (a finished run returns at once; its other settings stay as they were trained)."""
    from genlab.training.loop import resume, train

    from genlab.config import parse_overrides, split_overrides

    resumed = is_run_dir(run_dir)
    if resumed:
        changes = {"epochs": settings.epochs, "max_steps": settings.max_steps, "device": settings.device}
        summary = resume(family, run_dir, changes)
    else:
        model_kw, _ = split_overrides(parse_overrides(list(settings.overrides)))
        summary = train(family, model_kw, train_config_for(settings, lr), run_dir)
    if summary["stopped"] == "interrupted":  # Ctrl-C: the checkpoint is saved; the next sweep resumes it
        raise KeyboardInterrupt
    return {
        "family": family,
        "lr": lr,
        "run_dir": str(run_dir),
        "resumed": resumed,
        "stopped": summary["stopped"],
        "epoch": summary["epoch"],
        "step": summary["step"],
        "train_seconds": summary["train_seconds"],
    }


def run_sweep(settings: SweepSettings, out: str | os.PathLike) -> dict[str, Any]:
    """Train every (family, lr) (resuming what exists), then write OUT/report/ with the cheap evaluations."""
    from genlab.eval.report import ReportSettings, write_report

    out = Path(out)
    runs = []
    for family in settings.families:
        for lr in settings.lrs:
            runs.append(train_or_resume(family, lr, settings, out / run_name(family, lr)))
    report_settings = ReportSettings(
        compute=True, data_dir=settings.data_dir, n=settings.n, translation=settings.translate_experiment
    )
    report = write_report([r["run_dir"] for r in runs], out / "report", report_settings)
    return {
        "out": str(out),
        "settings": dataclasses.asdict(settings),
        "runs": runs,
        "report": {"markdown": report["markdown"], "html": report["html"]},
    }
