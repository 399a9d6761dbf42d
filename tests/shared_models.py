"""One set of tiny trained models and their exports, shared by every test that only needs *a* model.

Each model is trained (and exported) on first use, once per test run: under pytest-xdist every worker asks for it,
the first one builds it under a file lock in a folder all the run's workers share, and the others wait for it and
reuse it. Everything here is TINY width on mnist-5k with sample-quality tracking off (the tests about quality train
their own runs), the smallest training that still gives each test what it checks.

The stored runs and exports are read-only by agreement: a test that writes beside a run (``eval/`` results, a
resumed checkpoint) gets a copy (``one_class_vae`` and the others are copies made once per test module).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from genlab.config import TrainConfig

TINY = {"width": 4, "hidden": 16, "latent_dim": 4}  # model settings of every tiny test model (tests.conftest has it)
CONDITIONAL_MODEL = "genlab-vaegan-cond"  # the conditional VAE-GAN's export name (the others keep their default names)

# every shared run: mnist-5k at its native 28 px, no sample-quality tracking, small sample grids
BASE = dict(dataset="mnist-5k", log_every=5, sample_count=16, quality_every=0)

# key -> (family, model settings beyond TINY, training settings beyond BASE), and the optimizer steps that gives
SPECS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # digit 1 (400 images), two epochs of 25 steps: its negative ELBO already tells other digits apart
    "vae-1": ("vae", {}, dict(normal_class=1, batch_size=16, epochs=2)),
    # all ten digits (the evaluations need a run that was not one-class), one epoch of 20 steps
    "gan": ("gan", {}, dict(batch_size=200, epochs=1)),
    # all ten digits, one epoch of 62 steps: fewer, and its samples are one grey image whatever the seed (the
    # service's tests draw different images for different seeds)
    "vaegan": ("vaegan", {}, dict(batch_size=64, epochs=1)),
    # class-conditional on the ten digits, one epoch of 20 steps (samples need not look like digits)
    "vae-cond": ("vae", {"conditional": True}, dict(batch_size=200, epochs=1)),
    "gan-cond": ("gan", {"conditional": True}, dict(batch_size=200, epochs=1)),
    "vaegan-cond": ("vaegan", {"conditional": True}, dict(batch_size=200, epochs=1)),
}
STEPS = {"vae-1": 50, "gan": 20, "vaegan": 62, "vae-cond": 20, "gan-cond": 20, "vaegan-cond": 20}
EXPORT_NAMES = {"vaegan-cond": CONDITIONAL_MODEL}


def train_tiny(out: Path, family: str, model: dict[str, Any] | None = None, **kw) -> Path:
    """Train a TINY ``family`` model into ``out`` (``model``: more model settings, e.g. conditional=True)."""
    from genlab.training.loop import train

    train(family, {**TINY, **(model or {})}, TrainConfig(**{**BASE, **kw}), out)
    return out


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for this test run: shared by its xdist workers (each worker's basetemp is a child of the run's),
    this session's own without xdist (the parent would then be shared with every other pytest run)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(path: Path, build: Callable[[Path], object]) -> Path:
    """``path``, made by ``build(path)`` by whichever process gets here first; the others wait and reuse it."""
    done = path.with_name(f"{path.name}.done")
    with FileLock(str(path.with_name(f"{path.name}.lock"))):
        if not done.exists():
            if path.exists():  # a build that failed half-way
                shutil.rmtree(path)
            build(path)
            done.touch()
    return path


def without_encoder(export_dir: Path, dest: Path) -> Path:
    """A copy of an export with no encoder graph, named genlab-gan-no-encoder: an export of a model that cannot
    reconstruct (as GAN exports were before GANs had f-AnoGAN's encoder)."""
    import json

    shutil.copytree(export_dir, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    (dest / manifest["graphs"].pop("encoder")["file"]).unlink()
    manifest["files"].pop("encoder.onnx")
    manifest["name"] = "genlab-gan-no-encoder"
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest


class TrainedModels:
    """The shared runs (``run-KEY``: a run directory, last.pt inside) and exports (``export-KEY``) under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def run(self, key: str) -> Path:
        family, model, train = SPECS[key]
        return built_once(self.root / f"run-{key}", lambda out: train_tiny(out, family, model, **train))

    def checkpoint(self, key: str) -> Path:
        return self.run(key) / "last.pt"

    def export(self, key: str) -> Path:
        """``key``'s export (no BentoML store); ``gan-no-encoder``: the GAN's without its encoder graph."""
        if key == "gan-no-encoder":
            return built_once(self.root / "export-gan-no-encoder", lambda out: without_encoder(self.export("gan"), out))

        def build(out: Path) -> None:
            from genlab.export.onnx_export import export_checkpoint

            export_checkpoint(self.checkpoint(key), out, name=EXPORT_NAMES.get(key))

        return built_once(self.root / f"export-{key}", build)

    def copy_run(self, key: str, dest: Path) -> Path:
        """A private copy of ``key``'s run at ``dest`` (its name shows in reports), for a test that writes beside it."""
        return Path(shutil.copytree(self.run(key), dest))


class Exports(Mapping):
    """key -> export directory, each built on first use: vaegan, gan, vaegan-cond (named genlab-vaegan-cond),
    gan-no-encoder, and the other shared models' (vae-1, vae-cond, gan-cond)."""

    def __init__(self, models: TrainedModels):
        self.models = models

    def __getitem__(self, key: str) -> Path:
        if key not in SPECS and key != "gan-no-encoder":
            raise KeyError(key)
        return self.models.export(key)

    def __iter__(self) -> Iterator[str]:
        return iter([*SPECS, "gan-no-encoder"])

    def __len__(self) -> int:
        return len(SPECS) + 1


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> TrainedModels:
    """The shared tiny models of this test run (see the module docstring)."""
    return TrainedModels(shared_root(tmp_path_factory) / "shared-models")


@pytest.fixture(scope="session")
def exports(trained) -> Exports:
    """The shared exports, e.g. ``exports["vaegan"]``: a VAE-GAN, a GAN and a class-conditional VAE-GAN
    (``vaegan-cond``, named genlab-vaegan-cond) exported without the BentoML store, and ``gan-no-encoder``. The run
    each came from is beside it: ``exports["vaegan"].parent / "run-vaegan"``."""
    return Exports(trained)


@pytest.fixture(scope="module")
def one_class_vae(trained, tmp_path_factory) -> Path:
    """A VAE trained on mnist-5k digit 1 for two epochs (50 steps), calibrated: this module's copy, named vae-1."""
    return trained.copy_run("vae-1", tmp_path_factory.mktemp("runs") / "vae-1")


@pytest.fixture(scope="module")
def all_class_gan(trained, tmp_path_factory) -> Path:
    """A GAN trained on all mnist-5k classes for 20 steps, calibrated: this module's copy, named gan."""
    return trained.copy_run("gan", tmp_path_factory.mktemp("runs") / "gan")


@pytest.fixture(scope="module")
def conditional_vaegan(trained, tmp_path_factory) -> Path:
    """A class-conditional VAE-GAN on the ten mnist-5k digits, 20 steps (its samples need not look like digits):
    per-class prior, calibration and all. This module's copy; ``exports["vaegan-cond"]`` is its export."""
    return trained.copy_run("vaegan-cond", tmp_path_factory.mktemp("runs") / "vaegan-conditional")
