"""Shared fixtures: tiny configs, seeded data and fake dataset files the tests write."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

from genlab.config import ModelConfig
from genlab.models import MODELS

# the shared tiny trained models and their exports, fixtures for every test module (tests/shared_models.py)
from tests.shared_models import (  # noqa: F401 (fixtures)
    TINY,
    all_class_gan,
    built_once,
    conditional_vaegan,
    exports,
    one_class_vae,
    shared_root,
    trained,
)

FAMILIES = sorted(MODELS)


def pytest_configure(config):
    """An xdist worker shares the machine's cores with the others: one thread each for torch and the genlab
    processes it starts, rather than every worker oversubscribing every core."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def genlab_cache(tmp_path_factory):
    """One empty project cache for the whole test run (its xdist workers share it), inherited by the genlab processes
    tests start (never the user's ~/.cache/genlab): the reference classifier behind sample-quality tracking and the
    FID extractor trains once per run, by whichever process needs it first (the others wait for it)."""
    import genlab.classifier

    folder = shared_root(tmp_path_factory) / "genlab-cache"
    folder.mkdir(parents=True, exist_ok=True)
    train_classifier = genlab.classifier.train_classifier

    def train_once(dataset, size, channels, data_dir, seed, path, condition_on=None):
        with FileLock(f"{path}.lock"):
            if Path(path).is_file():  # another worker trained it while this one waited
                return None
            threads = torch.get_num_threads()
            torch.set_num_threads(os.cpu_count() or 1)  # the other workers often wait for it: every core
            try:
                return train_classifier(dataset, size, channels, data_dir, seed, path, condition_on)
            finally:
                torch.set_num_threads(threads)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENLAB_CACHE", str(folder))
        mp.setattr(genlab.classifier, "train_classifier", train_once)
        yield folder


def tiny_config(family: str, arch: str = "conv", image_size: int = 16, channels: int = 1, **kw) -> ModelConfig:
    return ModelConfig(family=family, arch=arch, image_size=image_size, channels=channels, **{**TINY, **kw})


def seeded_images(n: int, channels: int = 1, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Structured images in [-1, 1]: blurred blobs, so models have something to learn."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres = torch.rand(n, 2, generator=g) - 0.5
    blobs = torch.exp(-((xx - centres[:, 0, None, None]) ** 2 + (yy - centres[:, 1, None, None]) ** 2) / 0.1)
    return (blobs * 2 - 1)[:, None].expand(n, channels, size, size).contiguous()


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's IDX format: big-endian header, then raw uint8."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, h, w) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">ii", 2049, n) + labels.astype(np.uint8).tobytes()
    )


@pytest.fixture
def fake_mnist_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("MNIST/raw", "FashionMNIST/raw"):
        write_idx(tmp_path / sub, "train", rng.integers(0, 256, (200, 28, 28), dtype=np.uint8), np.arange(200) % 10)
        write_idx(tmp_path / sub, "t10k", rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), np.arange(50) % 10)
    return tmp_path


@pytest.fixture
def fake_cifar_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CIFAR-10's pickled batches; md5 checks are bypassed since the files are fakes."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, n in [(f"data_batch_{i}", 20) for i in range(1, 6)] + [("test_batch", 30)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    from genlab.torchvision_fix import import_torchvision

    import_torchvision()
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    return tmp_path


@pytest.fixture
def fake_celeba_dir(tmp_path: Path) -> Path:
    """CelebA's layout with 12 small images: the aligned images, the official partition (8 / 2 / 2) and an attribute
    file with two attributes (Male on every other image)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, 13)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(root / "img_align_celeba" / name)
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{n} {0 if i < 8 else 1 if i < 10 else 2}\n" for i, n in enumerate(names))
    )
    rows = [f"{n} {1 if i % 2 else -1} {1 if i % 3 == 0 else -1}" for i, n in enumerate(names)]
    (root / "list_attr_celeba.txt").write_text("\n".join([str(len(names)), "Male Smiling", *rows]) + "\n")
    return tmp_path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A user's folder: two class subfolders, PNG and JPEG, mixed modes and sizes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "my images"
    for cls, mode in (("cats", "RGB"), ("dogs", "L")):
        (root / cls / "nested").mkdir(parents=True)
        for i in range(12):
            size = (40 + i, 30) if mode == "RGB" else (20, 20)
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
            suffix = ".png" if i % 2 else ".JPG"
            image.save(root / cls / ("nested" if i % 3 == 0 else "") / f"{i}{suffix}")
    Image.new("RGBA", (16, 16), (255, 0, 0, 128)).save(root / "cats" / "alpha.png")
    (root / "notes.txt").write_text("not an image")
    return root


def bentoml_test_client(service):
    """A starlette TestClient over a BentoML service's ASGI app, in this process (genlab's services turn BentoML's
    metrics off, and keep theirs in a registry of each app's own, so several apps live side by side)."""
    from _bentoml_impl.server.app import ServiceAppFactory
    from starlette.testclient import TestClient

    service.inject_config()  # what service.to_asgi() does first
    return TestClient(ServiceAppFactory(service, is_main=True)())


@pytest.fixture(scope="session")
def installed_genlab(tmp_path_factory) -> Path:
    """genlab as `pip install` lays it out: the wheel setuptools builds from this tree, unpacked into a folder
    (what site-packages would hold). Built from a copy, so the checkout gains no build/ or egg-info; built once per
    test run (its xdist workers share it)."""
    return built_once(
        shared_root(tmp_path_factory) / "site-packages", lambda site: _install_genlab(tmp_path_factory, site)
    )


def _install_genlab(tmp_path_factory, site: Path) -> None:
    import shutil
    import subprocess
    import sys
    import zipfile

    repo = Path(__file__).resolve().parents[1]
    source, wheels = (tmp_path_factory.mktemp(name) for name in ("source", "wheels"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    for name in ("genlab", "training", "export", "service", "eval", "cli"):
        shutil.copytree(repo / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("genlab-*.whl")
    zipfile.ZipFile(wheel).extractall(site)
