"""Tiny trained runs shared by the evaluation tests (trained once per test session)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from genlab.config import TrainConfig
from tests.conftest import TINY

# mnist-5k at its native 28 px; a few steps are enough for the evaluations to have signal
QUICK = dict(dataset="mnist-5k", batch_size=32, log_every=5, sample_count=16)


def train_tiny(out: Path, family: str, model: dict[str, Any] | None = None, **kw) -> Path:
    """Train a TINY ``family`` model into ``out`` (``model``: more model settings, e.g. conditional=True)."""
    from genlab.training.loop import train

    train(family, {**TINY, **(model or {})}, TrainConfig(**{**QUICK, **kw}), out)
    return out


@pytest.fixture(scope="session")
def one_class_vae(tmp_path_factory) -> Path:
    """A VAE trained on mnist-5k digit 1 for two epochs (50 steps), calibrated."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "vae-1", "vae", normal_class=1, epochs=2, batch_size=16)


@pytest.fixture(scope="session")
def all_class_gan(tmp_path_factory) -> Path:
    """A GAN trained on all mnist-5k classes for a few steps, calibrated."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "gan", "gan", epochs=1, batch_size=200)


@pytest.fixture(scope="session")
def conditional_vaegan(tmp_path_factory) -> Path:
    """A class-conditional VAE-GAN on the ten mnist-5k digits, a few steps (its samples need not look like digits):
    per-class prior, calibration and all."""
    return train_tiny(
        tmp_path_factory.mktemp("runs") / "vaegan-conditional",
        "vaegan",
        {"conditional": True},
        epochs=1,
        batch_size=200,
    )
